"""How `axon train` ends: one exit code per outcome, so a job script can tell them apart.

A requeue loop needs exactly one question answered: did the job stop only because it was told
to (preempted, checkpointed: run it again), or for a reason running it again will not cure?
launch/*.sbatch requeue on PREEMPTED and on nothing else. srun reports the largest code of
its tasks; every rank of one outcome exits with the same code.
"""

FINISHED = 0  # trained to train.steps (and wrote the final checkpoint, unless train.final_checkpoint is false)
FAILED = 1  # an unexpected error (Python's own code for an uncaught exception): a traceback says where
USER_ERROR = 2  # the config, layout, data, checkpoint or out_dir is wrong: one sentence on every rank says which
PEER_LOST = 3  # a rank went silent (killed, out of memory, node failure); the survivors name it
HUNG = 4  # a collective waited past train.collective_timeout_s; OUT_DIR/flight has the records for `axon diagnose`
DIVERGED = 5  # the loss or gradient norm stopped being finite; the update was not applied
PREEMPTED = 75  # a SIGUSR1/SIGTERM stopped it at a step boundary after a checkpoint: requeue me (sysexits' EX_TEMPFAIL)
SIGTERM_OUTSIDE_STEPS = 143  # SIGTERM outside the training loop (no checkpoint), as a shell reports a SIGTERM death

MEANINGS = {FINISHED: "finished", FAILED: "failed (unexpected error)", USER_ERROR: "user error",
            PEER_LOST: "a rank was lost", HUNG: "a collective hung", DIVERGED: "diverged",
            PREEMPTED: "preempted after a checkpoint: requeue", SIGTERM_OUTSIDE_STEPS: "terminated outside the steps"}
