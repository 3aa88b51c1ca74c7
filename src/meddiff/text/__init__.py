"""Text for text-conditioned models (imported from their modules, so ``import meddiff.text`` stays cheap):

- ``encoders``: ``load_text_encoder("minilm" | local CLIP path)`` -> ``TextEncoder.encode(prompts)`` giving
  token embeddings, their mask and a pooled embedding (``TextEncoding``), offline only.
- ``captions``: training captions from a CSV file or generated from the label map by a documented template.
"""
