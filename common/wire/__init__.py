"""What crosses the network: the one definition of a site's reply, and Flower record conversion.

* `reply`   — every key a site may send, its type and its protection; fixed refusal and failure codes;
* `records` — trainable tensors to and from Flower's `ArrayRecord`.

Imported by the site, the server and the report; imports nothing of fedpath beyond itself.
"""
