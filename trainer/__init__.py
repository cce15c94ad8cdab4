"""mxft's code that runs on every host: the only package that imports mxnet.

It is copied to each host as it is, so it imports nothing from ``launcher`` or
``cluster`` and needs only Python with mxnet (and numpy, which mxnet brings).
"""
