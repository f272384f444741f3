"""GPT-style unit language model: data packing, training, scoring."""
