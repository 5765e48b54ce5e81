"""Studies and the demo: recipes that train, evaluate and report with the library, kept out of it.

- :mod:`gainet.studies.bias_study`: ``gainet bias-study`` (docs/bias_study.md);
- :mod:`gainet.studies.demo`: ``gainet demo``, whose first part is
  :mod:`gainet.studies.demo_shortcut`.

Like torchvision's ``references/``, these sit on top: they import the library, and no library
module imports from them (tests/test_layout.py checks it). Only the CLI calls them.
"""
