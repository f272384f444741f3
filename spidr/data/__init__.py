"""Audio corpora: reading and validating audio, manifests, and the generated demo corpus."""
