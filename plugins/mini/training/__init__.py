"""Training-data tools for anybind-mini: the reproducible synthetic corpus builder (``corpus``)."""
