"""Built-in modality and encoder plugins, discovered through the ``anybind`` entry points like any other."""
