"""PiCIE unsupervised semantic segmentation with CE, Focal and IB-Focal losses.

One module per idea of the paper: ``data`` (sources), ``transforms`` (the two views), ``model``
(ResNet-18 + FPN), ``clustering`` (mini-batch k-means), ``losses``, ``train``, ``metrics``,
``evaluate`` and ``compare`` (the paper's Table 2). ``config`` holds every parameter.
"""

__version__ = "0.1.0"
