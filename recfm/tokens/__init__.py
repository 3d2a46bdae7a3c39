"""Events → tokens: the tokenizer and item vocabulary (``tokenizer``), prepared datasets
(``prepare``), windows and batches of token sequences (``batching``, ``windows``), and the
tokenizer's per-request serving kernel (``serving``, held equal to ``tokenizer.tokenize``)."""
