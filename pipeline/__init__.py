"""The workflow's config, checked as a whole without torch (what Snakemake calls while it parses config.yaml)."""
