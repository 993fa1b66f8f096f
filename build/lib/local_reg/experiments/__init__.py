"""Experiments: train neural ODEs with and without (local or global) regularization, record
the results as JSON lines and report them side by side (``local-reg experiment``, ``local-reg report``).

- :mod:`.tasks`: the task interface and registry (one module per task).
- :mod:`.methods`: the training methods (vanilla, local-*, global-*).
- :mod:`.runner`: the training loop, checkpoints, resume and the results file.
- :mod:`.report`: the Markdown table and the plots.
- :mod:`.cli`: the command line.
"""
