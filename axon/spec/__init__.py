"""The rules the engine and the performance model share, in plain Python (never torch).

layout (the five axes and rank order), shapes (model shapes and presets), parameters
(every tensor's shape and the counts), layout_rules (what a layout must satisfy), training
(the training setup and the micro-batch split), stage_split (blocks per pipeline stage),
schedules (1F1B orders and their transfers), deadlock_check (those orders under NCCL's
rules), launcher (which launcher started a process), flops (the FLOP convention).
"""
