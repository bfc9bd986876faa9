"""TKP-PCL: top-K pooling with patch contrastive learning for weakly-supervised segmentation.

Plain PyTorch, in one subpackage per stage, each re-exporting its public names:

- :mod:`tkp_pcl.config`: the configuration models; :mod:`tkp_pcl.data`: the data sets as splits
- :mod:`tkp_pcl.model`: the patch classifier, stage 2's networks, backbone weights
- :mod:`tkp_pcl.stage1`: :func:`~tkp_pcl.stage1.train_stage1` (with an epoch callback), its
  loss, schedule and checkpoint
- :mod:`tkp_pcl.pseudo`: :func:`~tkp_pcl.pseudo.make_pseudo_labels` (with the dense CRF)
- :mod:`tkp_pcl.stage2`: :func:`~tkp_pcl.stage2.train_segmentation` and its evaluation
- :mod:`tkp_pcl.metrics` (:func:`~tkp_pcl.metrics.miou`), :mod:`tkp_pcl.imaging` and
  :mod:`tkp_pcl.runtime`: shared by the stages
"""

__version__ = "0.1.0"
