"""ResNet-34 U-Net: shapes, parameter counts, and torchvision weight-import parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import init_variables
from unet_jax.errors import UserError
from unet_jax.models import resnet_unet, torchvision_import

torch = pytest.importorskip("torch")
tnn = torch.nn


class TorchBasicBlock(tnn.Module):
  """torchvision.models.resnet.BasicBlock, same attribute names (torchvision is not
  installable here; the state_dict keys are what matter)."""

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(cout)
    self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                       tnn.BatchNorm2d(cout))

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet34(tnn.Module):
  """torchvision's ResNet-34 (blocks 3, 4, 6, 3); ResNet-18 with blocks (2, 2, 2, 2)."""

  def __init__(self, blocks=(3, 4, 6, 3)):
    super().__init__()
    self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = tnn.BatchNorm2d(64)
    self.maxpool = tnn.MaxPool2d(3, 2, 1)
    cin = 64
    for i, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
      layers = []
      for b in range(count):
        layers.append(TorchBasicBlock(cin, width, 2 if i > 0 and b == 0 else 1))
        cin = width
      setattr(self, f"layer{i + 1}", tnn.Sequential(*layers))
    self.fc = tnn.Linear(512, 1000)

  def features(self, x):
    stem = torch.relu(self.bn1(self.conv1(x)))
    x = self.maxpool(stem)
    out = [stem]
    for i in range(1, 5):
      x = getattr(self, f"layer{i}")(x)
      out.append(x)
    return out


def _randomised_torch_resnet(blocks=(3, 4, 6, 3)):
  torch.manual_seed(0)
  model = TorchResNet34(blocks)
  with torch.no_grad():  # Non-trivial BatchNorm statistics, so the import is really checked.
    for module in model.modules():
      if isinstance(module, tnn.BatchNorm2d):
        module.running_mean.uniform_(-0.2, 0.2)
        module.running_var.uniform_(0.5, 1.5)
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.2, 0.2)
  return model.eval()


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_shapes_for_odd_sizes_and_classes():
  model = resnet_unet.ResNetUNet(num_classes=11, arch="resnet18")
  logits = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((2, 101, 75, 3)))[0])
  assert logits.shape == (2, 101, 75, 11) and logits.dtype == jnp.float32


def test_encoder_parameter_count_equals_torchvision_resnet34_without_fc():
  model = resnet_unet.ResNetUNet(num_classes=1)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  torch_model = TorchResNet34()
  torch_count = sum(p.numel() for n, p in torch_model.named_parameters() if not n.startswith("fc"))
  assert _count(variables["params"]["encoder"]) == torch_count
  # BatchNorm running statistics: mean and var per BatchNorm channel in both.
  torch_stats = sum(b.numel() for n, b in torch_model.named_buffers() if "running" in n)
  assert _count(variables["batch_stats"]["encoder"]) == torch_stats


def test_imported_torchvision_weights_give_the_same_features(tmp_path):
  torch_model = _randomised_torch_resnet()
  path = tmp_path / "resnet34.pth"
  torch.save(torch_model.state_dict(), path)
  model = resnet_unet.ResNetUNet(num_classes=2)
  images = np.random.default_rng(0).normal(size=(2, 64, 96, 3)).astype(np.float32)
  variables = init_variables(model, jnp.asarray(images))
  variables = torchvision_import.load_torchvision_resnet(path, variables)
  encoder = resnet_unet.ResNetEncoder("resnet34")
  ours = encoder.apply({"params": variables["params"]["encoder"],
                        "batch_stats": variables["batch_stats"]["encoder"]},
                       jnp.asarray(images), train=False)
  with torch.no_grad():
    theirs = torch_model.features(torch.from_numpy(images).permute(0, 3, 1, 2))
  for level, (a, b) in enumerate(zip(ours, theirs)):
    b = b.permute(0, 2, 3, 1).numpy()
    assert a.shape == b.shape, level
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_single_channel_model_sums_the_rgb_stem(tmp_path):
  torch_model = _randomised_torch_resnet()
  path = tmp_path / "resnet34.pth"
  torch.save(torch_model.state_dict(), path)
  model = resnet_unet.ResNetUNet(num_classes=1)
  variables = init_variables(model, jnp.zeros((1, 32, 32, 1)))
  variables = torchvision_import.load_torchvision_resnet(path, variables)
  expected = torch_model.conv1.weight.detach().numpy().sum(axis=1).transpose(1, 2, 0)[:, :, None]
  np.testing.assert_allclose(variables["params"]["encoder"]["conv1"]["kernel"], expected,
                             rtol=1e-6)


def test_a_resnet18_file_for_a_resnet34_model_is_one_clear_error(tmp_path):
  torch_model = _randomised_torch_resnet()
  state = {k: v for k, v in torch_model.state_dict().items() if not k.startswith("layer3.5")}
  torch.save(state, tmp_path / "short.pth")
  model = resnet_unet.ResNetUNet(num_classes=1)
  variables = init_variables(model, jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(UserError, match="same depth"):
    torchvision_import.load_torchvision_resnet(tmp_path / "short.pth", variables)


def test_training_starts_from_an_imported_encoder(tmp_path):
  from tests.conftest import restore_saved_state, tiny_config  # pylint: disable=import-outside-toplevel
  from unet_jax import train  # pylint: disable=import-outside-toplevel
  # ResNet-18: the same import path as ResNet-34's (its parity is tested above) at half the
  # compile time.
  torch_model = _randomised_torch_resnet(blocks=(2, 2, 2, 2))
  torch.save(torch_model.state_dict(), tmp_path / "resnet18.pth")
  config = tiny_config(image_size=(32, 32), num_train_steps=1, eval_every_steps=1,
                       **{"model.arch": "resnet18_unet",
                          "model.pretrained": str(tmp_path / "resnet18.pth")})
  scores = train.train_and_evaluate(config, tmp_path / "run")
  assert np.isfinite(scores["loss"])
  state = restore_saved_state(tmp_path / "run", 1)
  # One Adam step moves a weight by at most ~lr: the stem is still the imported one.
  imported = torch_model.conv1.weight.detach().numpy().transpose(2, 3, 1, 0)
  np.testing.assert_allclose(state["params"]["encoder"]["conv1"]["kernel"], imported,
                             atol=2 * config.learning_rate)
