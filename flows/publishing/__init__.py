"""Publishing and reproducing: quilt3 bundles of data, model, code and environment on S3."""
