"""Reference embeddings straight from sentence-transformers, one text at a
time: the figures the engines must reproduce. Runs with an engine's
interpreter (it needs torch and sentence-transformers).

    python tests/support/st_reference.py MODEL_DIR < texts.json > vectors.json
"""

import json
import sys

from sentence_transformers import SentenceTransformer

model = SentenceTransformer(sys.argv[1], device="cpu", local_files_only=True)
texts = json.load(sys.stdin)
vectors = [model.encode([text], convert_to_numpy=True)[0].tolist() for text in texts]
json.dump(vectors, sys.stdout)
