"""What crosses the network: the one definition of a site's reply and of the server's train instruction,
and Flower record conversion.

* `reply`       — every key a site may send, its type and its protection; fixed refusal and failure codes;
* `instruction` — every key of the server's train config, its type and who sets it (the server, Flower);
  the server builds with it, the site parses with it and refuses undeclared keys;
* `records`     — trainable tensors to and from Flower's `ArrayRecord`.

Imported by the site, the server and the report; imports nothing of fedpath beyond itself.
"""
