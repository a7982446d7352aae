"""The one surprisal scorer, at the bottom of the layers: every place that ranks by surprisal
(text, kv's ``information`` policy, inspect, ``compress-dataset --task score``,
``/v1/score``) reads its numbers from here, so what inspect shows is what the compressors
rank. It imports nothing from the places.

- :mod:`.surprisal`: -log p(x_i | x_<i) from final hidden states (batched, padding-aware,
  chunked through the output head) and over texts of any length (a sliding window that
  carries context); one rule for the first token, which nothing predicts; the neutral
  question contrastive scores compare against.
- :mod:`.units`: token -> word -> unit aggregation (one membership rule, one reduction).
- :mod:`.segment`: text -> documents -> sentences -> words as character spans (the words
  and sentences text compresses, inspect shows and attributes).
- :mod:`.lm`: the one resolver from a model argument to (causal LM, tokenizer, name).
"""
