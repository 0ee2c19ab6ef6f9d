"""The experiment configs that ship with jaxsmooth, one ``get_config()`` file per experiment.

``--config NAME`` (e.g. ``--config quickstart``) loads ``NAME.py`` from here
(`jaxsmooth.config.find`); ``--config path/to/file.py`` loads any file, such
as a copy of one of these. The repository's ``configs/`` is a link to this
folder, so ``--config configs/quickstart.py`` names the same file.
"""
