"""Training: the reference's ``Trainer``, ``TrainingArguments``, callbacks, schedules and data collators.

``arguments`` is framework-free; the rest runs on PyTorch (and ``accelerate``).
"""
