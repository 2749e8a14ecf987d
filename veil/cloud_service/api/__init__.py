"""HTTP routes of the cloud service (``api/routes/<resource>.py``) and their dependencies."""
