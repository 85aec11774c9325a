"""Runs in ComfyUI's interpreter (``COMFYUI_PY``, cwd ``COMFYUI_PATH``): ComfyUI's own models against the pack's
bridge on the same inputs, and the process's resident memory at each stage.

``python bridge_probe.py args.json out.json``; args: ``repo`` (the pack), ``checkpoint``, ``lora``, ``motion_dir``,
``motion``, ``embeddings`` (a folder for ``subject.safetensors``), ``frames``, ``latent`` (side), ``seed``, ``fp32``
(ComfyUI's ``--force-fp32``; default true: the parity tests compare in fp32). ComfyUI runs on CUDA when torch sees a
GPU, else on the CPU.

For the plain MODEL and for MODEL + LoRA (kohya file through ``comfy.sd.load_lora_for_models``, as LoRA Loader does):
ε of ComfyUI's patched ``diffusion_model`` on each frame vs ε of the pack's video UNet (MVCustom Apply Motion Module
+ ``prepare_backbone``; the motion module adds nothing, see full_size.py); CLIP Text Encode's conditioning of
``embedding:subject`` vs the bridged text encoder with the subject token; VAE encode/decode vs the bridged VAE. Then
ε of a run of the plain MODEL after the LoRA's (``plain_after_lora``), and of the LoRA's under ComfyUI's --novram
state (``novram_lora``), each against ComfyUI's own ε of that model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path


def memory_mib() -> dict[str, float]:
    """Resident and peak resident memory of this process (/proc/self/status VmRSS, VmHWM), and on CUDA the memory
    torch has allocated now and at most, MiB."""
    import torch

    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    out = {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}
    if torch.cuda.is_available():
        out.update(cuda_allocated=torch.cuda.memory_allocated() / 2**20,
                   cuda_max_allocated=torch.cuda.max_memory_allocated() / 2**20)
    return out


def relative(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def main() -> None:
    args = json.loads(Path(sys.argv[1]).read_text())
    root = os.environ["COMFYUI_PATH"]
    sys.path.insert(0, root)
    os.chdir(root)
    import utils.extra_config  # noqa: F401  (before comfy.utils, which would shadow the utils package)
    import comfy.cli_args

    import torch

    comfy.cli_args.args.cpu = not torch.cuda.is_available()
    comfy.cli_args.args.force_fp32 = bool(args.get("fp32", True))

    import comfy.model_management as mm
    import comfy.sd
    import comfy.utils
    import folder_paths

    torch.set_num_threads(1)
    memory = {"imports": memory_mib()}
    spec = importlib.util.spec_from_file_location("mvcustom_pack", Path(args["repo"]) / "__init__.py",
                                                  submodule_search_locations=[args["repo"]])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["mvcustom_pack"] = pack
    spec.loader.exec_module(pack)
    bridge = importlib.import_module("mvcustom_pack.nodes.bridge")
    inference = importlib.import_module("mvcustom_pack.nodes.inference")
    from mvcustom_core.backbone.sampler import decode_latents
    from mvcustom_core.backbone.text import encode_prompt
    from mvcustom_core.customization.token import add_subject_token, save_comfy_embedding
    from mvcustom_core.customization.training import encode_references

    folder_paths.add_model_folder_path("animatediff_models", args["motion_dir"])
    width = 768
    gen = torch.Generator().manual_seed(args["seed"])
    subject = torch.randn(1, width, generator=gen) * 0.02
    save_comfy_embedding(Path(args["embeddings"]) / "subject.safetensors", subject)

    # Load Checkpoint, then the checkpoint alone placed by model management: the reference for memory.
    model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(args["checkpoint"], output_vae=True, output_clip=True,
                                                                 embedding_directory=args["embeddings"])
    mm.load_models_gpu([model], force_full_load=True)
    memory["checkpoint_loaded"] = memory_mib()
    lora = comfy.utils.load_torch_file(args["lora"], safe_load=True)
    model_lora, clip_lora = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 1.0)

    f, side = args["frames"], args["latent"]
    device = mm.get_torch_device()
    x = torch.randn(f, 4, side, side, generator=gen).to(device)
    t = torch.full((f,), 501.0, device=device)
    context = torch.randn(1, 77, width, generator=gen).to(device)
    results = {"family": type(model.model.model_config).__name__}
    sampler = inference.MVCustomSampler

    def video_eps(unet):
        """ε of the pack's video UNet for the frames x (as [1, 4, F, h, w]), back in ComfyUI's [F, 4, h, w]."""
        dtype = next(unet.parameters()).dtype
        video = x.permute(1, 0, 2, 3)[None].to(unet.device, dtype)
        eps = unet(video, t[0], encoder_hidden_states=context.expand(f, -1, -1).to(unet.device, dtype)).sample[0]
        return eps.permute(1, 0, 2, 3).float().cpu()

    def run_eps(m) -> float:
        """A sampler run's view of MODEL m (Apply Motion Module, then prepare_backbone loads it) and its ε."""
        backbone = bridge.ApplyMotionModule.execute(model=m, motion_module=args["motion"], window=1).args[0]
        return video_eps(bridge.prepare_backbone(sampler, backbone, ["unet"], input_name="model").unet)

    eps_plain = None
    for name, (m, c) in {"plain": (model, clip), "lora": (model_lora, clip_lora)}.items():
        with torch.inference_mode():  # as ComfyUI runs nodes
            mm.load_models_gpu([m], force_full_load=True)
            dtype = m.model_dtype()
            comfy_eps = m.model.diffusion_model(x.to(dtype), timesteps=t, context=context.expand(f, -1, -1).to(dtype))
            comfy_eps = comfy_eps.float().cpu()
            backbone = bridge.ApplyMotionModule.execute(model=m, motion_module=args["motion"], window=1).args[0]
            memory[f"{name}_motion_module"] = memory_mib()
            mm.load_models_gpu([backbone.model, backbone.motion], force_full_load=True)
            start = time.perf_counter()  # loaded already: this times building the views
            unet = bridge.prepare_backbone(sampler, backbone, ["unet"], input_name="model").unet
            views_seconds = time.perf_counter() - start
            memory[f"{name}_views"] = memory_mib()
            pack_eps = video_eps(unet)
            memory[f"{name}_forward"] = memory_mib()
            shared = {p.data_ptr() for p in m.model.diffusion_model.parameters()}
            in_unet = [p for n, p in unet.named_parameters() if "motion_modules" not in n]
            results[name] = {"eps_relative": relative(pack_eps, comfy_eps), "views_seconds": views_seconds,
                             "views_share_comfy_tensors": all(p.data_ptr() in shared for p in in_unet)}

            prompt = "photo of a embedding:subject car"
            comfy_cond = c.encode_from_tokens(c.tokenize(prompt)).float().cpu()
            # float32, as Train Customization asks: ComfyUI computes CLIP in float32 whatever the stored dtype
            text = bridge.prepare_backbone(sampler, backbone, ["text_encoder"], input_name="model", clip=c,
                                           dtype=torch.float32)
            tokenizer = text.tokenizer
            add_subject_token(text.text_encoder, tokenizer, "<mvc-subject>", embedding=subject)
            pack_cond = encode_prompt(text.text_encoder, tokenizer, ["photo of a <mvc-subject> car"]).float().cpu()
            results[name]["cond_relative"] = relative(pack_cond, comfy_cond)
            if eps_plain is None:
                eps_plain, cond_plain = comfy_eps, comfy_cond
            else:
                eps_lora = comfy_eps
                results[name]["lora_changes_eps"] = relative(comfy_eps, eps_plain)
                results[name]["lora_changes_cond"] = relative(comfy_cond, cond_plain)
            results[name]["clip_dtype"] = str(next(c.cond_stage_model.parameters()).dtype)
            del backbone, unet, text

    # The plain MODEL again after the LoRA's (another graph in the same server): ComfyUI puts the unpatched weights
    # back when it loads the plain clone, and the run's views must read those, not the LoRA's.
    with torch.inference_mode():
        results["plain_after_lora"] = {"eps_relative": relative(run_eps(model), eps_plain)}

    # ComfyUI's --novram: even a full load leaves the weights where they are and applies LoRAs per layer call. It
    # acts on GPU load devices only; this host may have none, so model management is told the CPU is not one.
    mm.unload_all_models()
    saved = mm.vram_state, mm.is_device_cpu
    mm.vram_state, mm.is_device_cpu = mm.VRAMState.NO_VRAM, lambda device: False
    try:
        with torch.inference_mode():
            results["novram_lora"] = {"eps_relative": relative(run_eps(model_lora), eps_lora)}
    finally:
        mm.vram_state, mm.is_device_cpu = saved
        mm.unload_all_models()

    with torch.inference_mode():
        pixels = torch.rand(2, 8 * side, 8 * side, 3, generator=gen)
        comfy_latent = vae.encode(pixels).float().cpu()
        views = bridge.prepare_backbone(sampler, model, ["vae"], input_name="model", vae=vae)
        pack_latent = encode_references(views.vae, pixels.permute(0, 3, 1, 2)).cpu() / 0.18215
        results["vae_encode_relative"] = relative(pack_latent, comfy_latent)
        comfy_images = vae.decode(comfy_latent).float().cpu()
        pack_images = decode_latents(views.vae, comfy_latent * 0.18215).permute(0, 2, 3, 1).cpu()
        results["vae_decode_max_abs"] = float((pack_images - comfy_images).abs().max())
    results["memory_mib"] = memory
    Path(sys.argv[2]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
