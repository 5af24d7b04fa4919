"""Which accelerator the machine has, and whether JAX is using it.

A JAX installed without the plugin of the machine's accelerator (e.g. `pip
install -U jax` on a Colab GPU runtime, which replaces the runtime's CUDA
build) runs on the CPU without an error, hundreds of times slower. The
machine's accelerator is read from the operating system, independently of
JAX, so that this case can be named and fixed.
"""

from __future__ import annotations

import os
import shutil
import subprocess

# `pip install` requirement of the JAX build for each accelerator.
JAX_REQUIREMENTS = {"gpu": "jax[cuda12]", "tpu": "jax[tpu]"}

# Where the operating system lists devices, and NVIDIA's device lister
# (module constants so that tests can point them elsewhere).
_DEVICE_DIR = "/dev"
_NVIDIA_SMI = "nvidia-smi"


def _has_nvidia_gpu() -> bool:
  if os.path.exists(os.path.join(_DEVICE_DIR, "nvidia0")):
    return True
  if shutil.which(_NVIDIA_SMI) is None:
    return False
  try:
    listed = subprocess.run([_NVIDIA_SMI, "-L"], capture_output=True, text=True,
                            timeout=20, check=False)
  except (OSError, subprocess.SubprocessError):
    return False
  return listed.returncode == 0 and "GPU" in listed.stdout


def _has_tpu() -> bool:
  # TPU VMs expose their chips as /dev/accel* (v2-v4) or as numbered
  # /dev/vfio groups (v5 and later); Colab's TPU runtimes also set these
  # variables.
  if os.path.exists(os.path.join(_DEVICE_DIR, "accel0")):
    return True
  vfio = os.path.join(_DEVICE_DIR, "vfio")
  if os.path.isdir(vfio) and any(name.isdigit() for name in os.listdir(vfio)):
    return True
  return any(os.environ.get(name) for name in ("TPU_ACCELERATOR_TYPE", "COLAB_TPU_ADDR"))


def present() -> str | None:
  """"gpu" or "tpu" when the machine has one (whatever JAX uses), else None."""
  if _has_tpu():
    return "tpu"
  if _has_nvidia_gpu():
    return "gpu"
  return None


def unused_message(platform: str, accelerator: str | None) -> str | None:
  """A one-line fix when `accelerator` is present but JAX runs on `platform`
  "cpu"; None when JAX uses the accelerator or there is none."""
  if accelerator is None or platform != "cpu":
    return None
  requirement = JAX_REQUIREMENTS[accelerator]
  return (f"This machine has a {accelerator.upper()} but JAX runs on the CPU: the installed "
          f"JAX has no {accelerator.upper()} support. Run pip install -U \"{requirement}\", "
          "then restart Python (in Colab: Runtime > Restart session) and run again.")


def check_jax_uses_accelerator() -> str:
  """Returns JAX's platform; raises RuntimeError if it ignores the machine's
  GPU or TPU (see `unused_message`)."""
  import jax  # pylint: disable=g-import-not-at-top
  platform = jax.default_backend()
  message = unused_message(platform, present())
  if message:
    raise RuntimeError(message)
  return platform
