"""The application layer: the command line and the local Prefect server + worker that drive the pipeline.

Only this package (and the top-level flows/ and tasks/) may import Prefect; the library around it never does.
"""
