"""The ``sightline`` command line: a thin interface over ``services``."""
