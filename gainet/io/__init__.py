"""What passes between gainet and the person running it, kept in one room so every command
treats it alike:

- :mod:`gainet.io.options`: options a user writes by hand (a YAML config, ``--dataset-options``)
  checked against what receives them, one line naming a typo or a wrong type;
- :mod:`gainet.io.input_size`: an image side checked against what a model can take, one line with
  the smallest side that works;
- :mod:`gainet.io.progress`: progress bars, drawn only on a terminal;
- :mod:`gainet.io.outputs`: output directories that never lose a finished run silently.

Nothing here imports the rest of gainet (the data layer, training, evaluation, WSSS and the
shortcuts all use these), and nothing is imported eagerly: ``import gainet.io.options`` stays
free of torch.
"""
