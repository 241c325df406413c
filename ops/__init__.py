"""Services the pipeline runs on, without Prefect: S3 storage (``storage``), MLflow tracking
(``tracking``, the only module importing mlflow) and the torchrun launcher (``launch``).

Imports go one way: ``udcguard`` <- ``ops`` <- ``tasks`` <- ``flows``; nothing here imports
Prefect, so torchrun ranks and Dask workers can import it cheaply.
"""
