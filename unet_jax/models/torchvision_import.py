"""Imports a torchvision ResNet-18/34 state_dict file (one the user has) into ResNetUNet.

Nothing is downloaded: pass the path of a `.pth` file saved with `torch.save(model.state_dict())`
(e.g. torchvision's resnet34-b627a593.pth). torch is needed only to read that file.
"""

import numpy as np

from unet_jax.errors import UserError


def _conv(weight, in_channels: int | None = None):
  """OIHW -> HWIO; an RGB stem is summed to the model's single input channel if needed."""
  kernel = np.transpose(np.asarray(weight, np.float32), (2, 3, 1, 0))
  if in_channels == 1 and kernel.shape[2] == 3:
    kernel = kernel.sum(axis=2, keepdims=True)
  return kernel


def _get(state_dict, key):
  if key not in state_dict:
    raise UserError(f"the state_dict has no {key!r}; is it a torchvision ResNet of the same "
                    "depth as the model (resnet18 vs resnet34)?")
  return state_dict[key]


def _bn(state_dict, prefix):
  params = {"scale": _get(state_dict, f"{prefix}.weight"),
            "bias": _get(state_dict, f"{prefix}.bias")}
  stats = {"mean": _get(state_dict, f"{prefix}.running_mean"),
           "var": _get(state_dict, f"{prefix}.running_var")}
  as_np = lambda d: {k: np.asarray(v, np.float32) for k, v in d.items()}
  return as_np(params), as_np(stats)


def _torch_key(flax_name: str) -> str:
  """flax module name -> torchvision prefix: layer2_0 -> layer2.0, downsample_conv -> ..."""
  return (flax_name.replace("downsample_conv", "downsample.0")
          .replace("downsample_bn", "downsample.1").replace("_", "."))


def encoder_variables_from_state_dict(state_dict: dict, encoder_params: dict,
                                      encoder_stats: dict) -> tuple[dict, dict]:
  """Returns (params, batch_stats) for the `encoder` subtree, shaped like the given ones."""
  state_dict = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
                for k, v in state_dict.items()}
  params, stats = {}, {}
  in_channels = encoder_params["conv1"]["kernel"].shape[2]
  params["conv1"] = {"kernel": _conv(_get(state_dict, "conv1.weight"), in_channels)}
  params["bn1"], stats["bn1"] = _bn(state_dict, "bn1")
  for block_name, block in encoder_params.items():
    if not block_name.startswith("layer"):
      continue
    prefix = _torch_key(block_name)
    params[block_name], stats[block_name] = {}, {}
    for layer_name in block:
      key = f"{prefix}.{_torch_key(layer_name)}"
      if "conv" in layer_name:
        params[block_name][layer_name] = {"kernel": _conv(_get(state_dict, f"{key}.weight"))}
      else:
        params[block_name][layer_name], stats[block_name][layer_name] = _bn(state_dict, key)
  _check_shapes(params, encoder_params, "params")
  _check_shapes(stats, encoder_stats, "batch_stats")
  return params, stats


def _check_shapes(imported, expected, what: str, path: str = "encoder") -> None:
  if isinstance(expected, dict):
    for key, value in expected.items():
      if key not in imported:
        raise UserError(f"state_dict has nothing for {path}/{key} ({what}); is it a ResNet of "
                        "the same depth (resnet18 vs resnet34)?")
      _check_shapes(imported[key], value, what, f"{path}/{key}")
  elif tuple(np.shape(imported)) != tuple(expected.shape):
    raise UserError(f"{path} ({what}): state_dict shape {np.shape(imported)} != model shape "
                    f"{tuple(expected.shape)}; is it a ResNet of the same depth?")


def load_torchvision_resnet(path, variables: dict) -> dict:
  """`variables` of a ResNetUNet with its encoder replaced by the weights in `path`."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError(f"reading the ResNet state_dict {path} needs PyTorch; install it "
                    "(pip install torch) or leave --config.model.pretrained empty") from e
  try:
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
  except (OSError, RuntimeError) as e:
    raise UserError(f"cannot read the ResNet state_dict {path}: {e}; pass a file saved with "
                    "torch.save(model.state_dict())") from e
  params, stats = encoder_variables_from_state_dict(
      state_dict, variables["params"]["encoder"], variables["batch_stats"]["encoder"])
  return {"params": {**variables["params"], "encoder": params},
          "batch_stats": {**variables["batch_stats"], "encoder": stats}}
