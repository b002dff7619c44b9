"""Trials: long, seeded scenarios against real nodes, the real daemon process and a faulty merchant.

`invariants` checks what every trial must end with (nothing lost, nothing invented); each trial module
(`crash_trial`, ...) drives one kind of trouble and is runnable with `python -m tests.trials.NAME`.
"""
