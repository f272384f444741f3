"""Speech data: audio reading, corpus manifests and the generated demo corpus."""
