"""Using the foundation model downstream: as a subgraph, fine-tuned, distilled, prompted."""
