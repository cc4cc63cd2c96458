"""Validation, the deployment gate, the approval console and deployment to printers."""
