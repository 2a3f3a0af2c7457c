"""The tools stage: a builder's ``@tool`` functions as a worker on the bus (``voxbus tools``)."""
