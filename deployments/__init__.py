"""Code that serves or deploys the qbq flows; prefect.yaml is the declarative twin."""
