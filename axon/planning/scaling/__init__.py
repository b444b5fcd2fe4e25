"""Weak- and strong-scaling studies: `python -m axon scaling {plan|submit|report} STUDY.yaml`.

study.py reads and checks a study file, plan.py prices its points with perfmodel, submit.py
writes and starts one run per point (Slurm or here), report.py turns the runs' metrics into
tables and plots beside the predictions. Only submit --launcher local starts torch.
"""
