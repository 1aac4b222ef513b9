"""A1111's option keys that clients read or write, registered in the host's options store with A1111's names, types
and defaults (A1111 `modules/shared_options.py`), so `GET /sdapi/v1/options` shows them and `POST /options` /
`override_settings` accept them.

Two kinds:
* honoured here (`HONOURED`): the generation, saving or UI code reads them (`sd_vae`, `jpeg_quality`,
  `samples_format`, `webp_lossless`, `tiling`, `eta_noise_seed_delta`, `infotext_styles`, `send_seed`, `send_size`,
  `sd_checkpoint_hash` as a read-only value, ...);
* stored only (everything else): kept in config.json and sent back unchanged, with no effect in this WebUI. Their
  comment says so (`NO_EFFECT`), the Settings tab shows it and README.md lists the rule.
Keys some other part registers (the Lora extension's `lora_*`, the host's `CLIP_stop_at_last_layers`, ...) are not
registered again here.
"""

from __future__ import annotations

from typing import Any

from modules.options import Options

NO_EFFECT = "No effect in this WebUI: stored and sent back for A1111 clients."
READ_ONLY = "Read-only: set by the WebUI when a checkpoint loads; values sent by clients are ignored."

SAMPLES_FORMATS = ["png", "jpg", "jpeg", "webp"]

# key: (default, label, section, extra OptionInfo fields). Extra "effect": True marks an honoured option.
_T = dict[str, tuple[Any, str, str, dict[str, Any]]]

HONOURED: _T = {
    "jpeg_quality": (80, "Quality for saved jpeg and webp images", "Saving images", {"minimum": 1, "maximum": 100}),
    "webp_lossless": (False, "Use lossless compression for webp images", "Saving images", {}),
    "sd_vae": ("Automatic", "SD VAE", "VAE", {
        "infotext": "VAE",
        "comment": "Automatic = a VAE file named like the checkpoint, else the checkpoint's own; "
                   "None = the checkpoint's own VAE; or a file from models/VAE"}),
    "sd_vae_overrides_per_model_preferences": (True, "Selected VAE overrides per-model preferences", "VAE", {
        "comment": "off: a VAE file named like the checkpoint wins over the selected one"}),
    "add_vae_name_to_info": (True, "Add VAE name to infotext", "Infotext", {}),
    "add_vae_hash_to_info": (True, "Add VAE hash to infotext", "Infotext", {}),
    "tiling": (False, "Tiling", "Stable Diffusion", {"infotext": "Tiling", "comment": "produce a tileable picture"}),
    "eta_noise_seed_delta": (0, "Eta noise seed delta", "Sampler parameters", {
        "infotext": "ENSD", "comment": "ENSD: the noise of ancestral/SDE samplers is drawn from seed + this value"}),
    "infotext_styles": ("Apply if any", "Infer styles from prompts of pasted infotext", "Infotext", {
        "choices": ["Ignore", "Apply", "Discard", "Apply if any"]}),
    "send_seed": (True, "Send seed when sending prompt or image to other interface", "User interface", {}),
    "send_size": (True, "Send size when sending prompt or image to another interface", "User interface", {}),
    "sd_checkpoint_hash": ("", "SHA256 hash of the current checkpoint", "Hidden options", {"comment": READ_ONLY}),
    # honoured by the grids (X/Y/Z plot), img2img, SD upscale and Extras
    "grid_save": (True, "Always save all generated image grids", "Saving images", {}),
    "outdir_img2img_samples": ("", "Output directory for img2img images", "Paths for saving", {}),
    "outdir_extras_samples": ("", "Output directory for images from extras tab", "Paths for saving", {}),
    "outdir_txt2img_grids": ("", "Output directory for txt2img grids", "Paths for saving", {}),
    "upscaler_for_img2img": (None, "Upscaler for img2img", "Upscaling", {}),
    "initial_noise_multiplier": (1.0, "Noise multiplier for img2img", "img2img", {"minimum": 0.0, "maximum": 1.5}),
}

STORED: _T = {
    # Saving images
    "samples_filename_pattern": ("", "Images filename pattern", "Saving images", {}),
    "save_images_add_number": (True, "Add number to filename when saving", "Saving images", {}),
    "grid_format": ("png", "File format for grids", "Saving images", {}),
    "grid_extended_filename": (False, "Add extended info (seed, prompt) to filename when saving grid",
                               "Saving images", {}),
    "grid_only_if_multiple": (True, "Do not save grids consisting of one picture", "Saving images", {}),
    "grid_prevent_empty_spots": (False, "Prevent empty spots in grid", "Saving images", {}),
    "n_rows": (-1, "Grid row count", "Saving images", {"minimum": -1, "maximum": 16}),
    "save_txt": (False, "Create a text file next to every image with generation parameters", "Saving images", {}),
    "save_images_before_face_restoration": (False, "Save a copy of image before doing face restoration",
                                            "Saving images", {}),
    "save_images_before_highres_fix": (False, "Save a copy of image before applying highres fix", "Saving images", {}),
    "save_images_before_color_correction": (False, "Save a copy of image before applying color correction",
                                            "Saving images", {}),
    "save_mask": (False, "For inpainting, save a copy of the greyscale mask", "Saving images", {}),
    "save_mask_composite": (False, "For inpainting, save a masked composite", "Saving images", {}),
    "export_for_4chan": (True, "Save copy of large images as JPG", "Saving images", {}),
    "img_downscale_threshold": (4.0, "File size limit for the above option, MB", "Saving images", {}),
    "target_side_length": (4000, "Width/height limit for the above option, in pixels", "Saving images", {}),
    "img_max_size_mp": (200, "Maximum image size, in megapixels", "Saving images", {}),
    "use_original_name_batch": (True, "Use original name for output filename during batch process in extras tab",
                                "Saving images", {}),
    "use_upscaler_name_as_suffix": (False, "Use upscaler name as filename suffix in the extras tab",
                                    "Saving images", {}),
    "save_selected_only": (True, "When using 'Save' button, only save a single selected image", "Saving images", {}),
    "save_init_img": (False, "Save init images when using img2img", "Saving images", {}),
    "temp_dir": ("", "Directory for temporary images; leave empty for default", "Saving images", {}),
    "clean_temp_dir_at_start": (False, "Cleanup non-default temporary directory when starting webui",
                                "Saving images", {}),
    "save_incomplete_images": (False, "Save incomplete images", "Saving images", {}),
    # Paths for saving
    "outdir_samples": ("", "Output directory for images", "Paths for saving", {}),
    "outdir_grids": ("", "Output directory for grids", "Paths for saving", {}),
    "outdir_img2img_grids": ("", "Output directory for img2img grids", "Paths for saving", {}),
    "outdir_save": ("", "Directory for saving images using the Save button", "Paths for saving", {}),
    "outdir_init_images": ("", "Directory for saving init images when using img2img", "Paths for saving", {}),
    "save_to_dirs": (True, "Save images to a subdirectory", "Saving to a directory", {}),
    "grid_save_to_dirs": (True, "Save grids to a subdirectory", "Saving to a directory", {}),
    "use_save_to_dirs_for_ui": (False, "When using \"Save\" button, save images to a subdirectory",
                                "Saving to a directory", {}),
    "directories_filename_pattern": ("[date]", "Directory name pattern", "Saving to a directory", {}),
    "directories_max_prompt_words": (8, "Max prompt words for [prompt_words] pattern", "Saving to a directory",
                                     {"minimum": 1, "maximum": 20}),
    # Upscaling
    "ESRGAN_tile": (192, "Tile size for ESRGAN upscalers", "Upscaling", {"minimum": 0, "maximum": 512}),
    "ESRGAN_tile_overlap": (8, "Tile overlap for ESRGAN upscalers", "Upscaling", {"minimum": 0, "maximum": 48}),
    "realesrgan_enabled_models": (["R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B"],
                                  "Select which Real-ESRGAN models to show in the web UI", "Upscaling", {}),
    # Face restoration
    "face_restoration": (False, "Restore faces", "Face restoration", {"infotext": "Face restoration"}),
    "face_restoration_model": ("CodeFormer", "Face restoration model", "Face restoration", {}),
    "code_former_weight": (0.5, "CodeFormer weight", "Face restoration", {"minimum": 0.0, "maximum": 1.0}),
    "face_restoration_unload": (False, "Move face restoration model from VRAM into RAM after processing",
                                "Face restoration", {}),
    # System
    "auto_launch_browser": ("Local", "Automatically open webui in browser on startup", "System",
                            {"choices": ["Disable", "Local", "Remote"]}),
    "show_warnings": (False, "Show warnings in console", "System", {}),
    "show_gradio_deprecation_warnings": (True, "Show gradio deprecation warnings in console", "System", {}),
    "memmon_poll_rate": (8, "VRAM usage polls per second during generation", "System",
                         {"minimum": 0, "maximum": 40}),
    "samples_log_stdout": (False, "Always print all generation info to standard output", "System", {}),
    "multiple_tqdm": (True, "Add a second progress bar to the console that shows progress for an entire job",
                      "System", {}),
    "print_hypernet_extra": (False, "Print extra hypernetwork information to console", "System", {}),
    "list_hidden_files": (True, "Load models/files in hidden directories", "System", {}),
    "disable_mmap_load_safetensors": (False, "Disable memmapping for loading .safetensors files", "System", {}),
    "hide_ldm_prints": (True, "Prevent Stability-AI's ldm/sgm modules from printing noise to console", "System", {}),
    # API
    "api_enable_requests": (True, "Allow http:// and https:// URLs for input images in API", "API", {}),
    "api_forbid_local_requests": (True, "Forbid URLs to local resources", "API", {}),
    "api_useragent": ("", "User agent for requests", "API", {}),
    # Training
    "unload_models_when_training": (False, "Move VAE and CLIP to RAM when training if possible", "Training", {}),
    "pin_memory": (False, "Turn on pin_memory for DataLoader", "Training", {}),
    "save_optimizer_state": (False, "Saves Optimizer state as separate *.optim file", "Training", {}),
    "save_training_settings_to_txt": (True, "Save textual inversion and hypernet settings to a text file",
                                      "Training", {}),
    "dataset_filename_word_regex": ("", "Filename word regex", "Training", {}),
    "dataset_filename_join_string": (" ", "Filename join string", "Training", {}),
    "training_image_repeats_per_epoch": (1, "Number of repeats for a single input image per epoch", "Training", {}),
    "training_write_csv_every": (500, "Save an csv containing the loss to log directory every N steps", "Training",
                                 {}),
    "training_xattention_optimizations": (False, "Use cross attention optimizations while training", "Training", {}),
    "training_enable_tensorboard": (False, "Enable tensorboard logging", "Training", {}),
    "training_tensorboard_save_images": (False, "Save generated images within tensorboard", "Training", {}),
    "training_tensorboard_flush_every": (120, "How often, in seconds, to flush the pending tensorboard events",
                                         "Training", {}),
    # Stable Diffusion
    "sd_checkpoints_limit": (1, "Maximum number of checkpoints loaded at the same time", "Stable Diffusion",
                             {"minimum": 1, "maximum": 10}),
    "sd_checkpoints_keep_in_cpu": (True, "Only keep one model on device", "Stable Diffusion", {}),
    "sd_checkpoint_cache": (0, "Checkpoints to cache in RAM", "Stable Diffusion", {"minimum": 0, "maximum": 10}),
    "sd_unet": ("Automatic", "SD Unet", "Stable Diffusion", {}),
    "enable_quantization": (False, "Enable quantization in K samplers for sharper and cleaner results",
                            "Stable Diffusion", {}),
    "enable_emphasis": (True, "Enable emphasis", "Stable Diffusion", {}),
    "enable_batch_seeds": (True, "Make K-diffusion samplers produce same images in a batch as when making a "
                                 "single image", "Stable Diffusion", {}),
    "upcast_attn": (False, "Upcast cross attention layer to float32", "Stable Diffusion", {}),
    "randn_source": ("GPU", "Random number generator source", "Stable Diffusion",
                     {"choices": ["GPU", "CPU", "NV"],
                      "comment": NO_EFFECT + " Noise is always drawn on the CPU (infotext `RNG: CPU`)."}),
    "sd_lora": ("None", "Add network to prompt", "Extra Networks", {}),
    "sd_hypernetwork": ("None", "Add hypernetwork to prompt", "Extra Networks", {}),
    "sdxl_crop_top": (0, "crop top coordinate", "Stable Diffusion XL", {}),
    "sdxl_crop_left": (0, "crop left coordinate", "Stable Diffusion XL", {}),
    "sdxl_refiner_low_aesthetic_score": (2.5, "SDXL low aesthetic score", "Stable Diffusion XL", {}),
    "sdxl_refiner_high_aesthetic_score": (6.0, "SDXL high aesthetic score", "Stable Diffusion XL", {}),
    # VAE
    "sd_vae_checkpoint_cache": (0, "VAE Checkpoints to cache in RAM", "VAE", {"minimum": 0, "maximum": 10}),
    "auto_vae_precision": (True, "Automatically revert VAE to 32-bit floats", "VAE",
                           {"comment": NO_EFFECT + " A half-precision VAE that gives NaNs is always retried in "
                                                   "float32."}),
    "sd_vae_encode_method": ("Full", "VAE type for encode", "VAE", {"choices": ["Full", "TAESD"]}),
    "sd_vae_decode_method": ("Full", "VAE type for decode", "VAE", {"choices": ["Full", "TAESD"]}),
    # img2img
    "inpainting_mask_weight": (1.0, "Inpainting conditioning mask strength", "img2img",
                               {"minimum": 0.0, "maximum": 1.0}),
    "img2img_extra_noise": (0.0, "Extra noise multiplier for img2img and hires fix", "img2img",
                            {"minimum": 0.0, "maximum": 1.0}),
    "img2img_color_correction": (False, "Apply color correction to img2img results to match original colors",
                                 "img2img", {}),
    "img2img_fix_steps": (False, "With img2img, do exactly the amount of steps the slider specifies", "img2img", {}),
    "img2img_background_color": ("#ffffff", "With img2img, fill transparent parts of the input image with this color",
                                 "img2img", {}),
    "img2img_editor_height": (720, "Height of the image editor", "img2img", {"minimum": 80, "maximum": 1600}),
    "img2img_sketch_default_brush_color": ("#ffffff", "Sketch initial brush color", "img2img", {}),
    "img2img_inpaint_mask_brush_color": ("#ffffff", "Inpaint mask brush color", "img2img", {}),
    "img2img_inpaint_sketch_default_brush_color": ("#ffffff", "Inpaint sketch initial brush color", "img2img", {}),
    "return_mask": (False, "For inpainting, include the greyscale mask in results for web", "img2img", {}),
    "return_mask_composite": (False, "For inpainting, include masked composite in results for web", "img2img", {}),
    # Optimizations
    "cross_attention_optimization": ("Automatic", "Cross attention optimization", "Optimizations", {}),
    "s_min_uncond": (0.0, "Negative Guidance minimum sigma", "Optimizations", {"minimum": 0.0, "maximum": 15.0}),
    "token_merging_ratio": (0.0, "Token merging ratio", "Optimizations", {"minimum": 0.0, "maximum": 0.9}),
    "token_merging_ratio_img2img": (0.0, "Token merging ratio for img2img", "Optimizations",
                                    {"minimum": 0.0, "maximum": 0.9}),
    "token_merging_ratio_hr": (0.0, "Token merging ratio for high-res pass", "Optimizations",
                               {"minimum": 0.0, "maximum": 0.9}),
    "pad_cond_uncond": (False, "Pad prompt/negative prompt to be same length", "Optimizations", {}),
    "persistent_cond_cache": (True, "Persistent cond cache", "Optimizations", {}),
    "batch_cond_uncond": (True, "Batch cond/uncond", "Optimizations", {}),
    # Compatibility
    "use_old_emphasis_implementation": (False, "Use old emphasis implementation", "Compatibility", {}),
    "use_old_karras_scheduler_sigmas": (False, "Use old karras scheduler sigmas (0.1 to 10)", "Compatibility", {}),
    "no_dpmpp_sde_batch_determinism": (False, "Do not make DPM++ SDE deterministic across different batch sizes",
                                       "Compatibility", {}),
    "use_old_hires_fix_width_height": (False, "For hires fix, use width/height sliders to set final resolution",
                                       "Compatibility", {}),
    "dont_fix_second_order_samplers_schedule": (False, "Do not fix prompt schedule for second order samplers",
                                                "Compatibility", {}),
    "hires_fix_use_firstpass_conds": (False, "For hires fix, calculate conds of second pass using extra networks "
                                             "of first pass", "Compatibility", {}),
    "use_old_scheduling": (False, "Use old prompt editing timelines", "Compatibility", {}),
    # Interrogate
    "interrogate_keep_models_in_memory": (False, "Keep models in VRAM", "Interrogate", {}),
    "interrogate_return_ranks": (False, "Include ranks of model tags matches in results", "Interrogate", {}),
    "interrogate_clip_num_beams": (1, "BLIP: num_beams", "Interrogate", {"minimum": 1, "maximum": 16}),
    "interrogate_clip_min_length": (24, "BLIP: minimum description length", "Interrogate",
                                    {"minimum": 1, "maximum": 128}),
    "interrogate_clip_max_length": (48, "BLIP: maximum description length", "Interrogate",
                                    {"minimum": 1, "maximum": 256}),
    "interrogate_clip_dict_limit": (1500, "CLIP: maximum number of lines in text file", "Interrogate", {}),
    "interrogate_clip_skip_categories": ([], "CLIP: skip inquire categories", "Interrogate", {}),
    "interrogate_deepbooru_score_threshold": (0.5, "deepbooru: score threshold", "Interrogate",
                                              {"minimum": 0.0, "maximum": 1.0}),
    "deepbooru_sort_alpha": (True, "deepbooru: sort tags alphabetically", "Interrogate", {}),
    "deepbooru_use_spaces": (True, "deepbooru: use spaces in tags", "Interrogate", {}),
    "deepbooru_escape": (True, "deepbooru: escape (\\) brackets", "Interrogate", {}),
    "deepbooru_filter_tags": ("", "deepbooru: filter out those tags", "Interrogate", {}),
    # Extra networks
    "extra_networks_show_hidden_directories": (True, "Show hidden directories", "Extra Networks", {}),
    "extra_networks_hidden_models": ("When searched", "Show cards for models in hidden directories",
                                     "Extra Networks", {"choices": ["Always", "When searched", "Never"]}),
    "extra_networks_card_width": (0, "Card width for Extra Networks", "Extra Networks", {}),
    "extra_networks_card_height": (0, "Card height for Extra Networks", "Extra Networks", {}),
    "extra_networks_card_text_scale": (1.0, "Card text scale", "Extra Networks", {"minimum": 0.0, "maximum": 2.0}),
    "extra_networks_card_show_desc": (True, "Show description on card", "Extra Networks", {}),
    "extra_networks_add_text_separator": (" ", "Extra networks separator", "Extra Networks", {}),
    "ui_extra_networks_tab_reorder": ("", "Extra networks tab order", "Extra Networks", {}),
    "textual_inversion_print_at_load": (False, "Print a list of Textual Inversion embeddings when loading model",
                                        "Extra Networks", {}),
    "textual_inversion_add_hashes_to_infotext": (True, "Add Textual Inversion hashes to infotext", "Extra Networks",
                                                 {}),
    "lora_not_found_warning_console": (False, "Lora not found warning in console", "Extra Networks", {}),
    "lora_not_found_gradio_warning": (False, "Lora not found warning popup in webui", "Extra Networks", {}),
    # User interface
    "localization": ("None", "Localization", "User interface", {}),
    "gradio_theme": ("Default", "Gradio theme", "User interface", {}),
    "gradio_themes_cache": (True, "Cache gradio themes locally", "User interface", {}),
    "gallery_height": ("", "Gallery height", "User interface", {}),
    "return_grid": (True, "Show grid in results for web", "User interface", {}),
    "do_not_show_images": (False, "Do not show any images in results for web", "User interface", {}),
    "js_modal_lightbox": (True, "Enable full page image viewer", "User interface", {}),
    "js_modal_lightbox_initially_zoomed": (True, "Show images zoomed in by default in full page image viewer",
                                           "User interface", {}),
    "js_modal_lightbox_gamepad": (False, "Navigate image viewer with gamepad", "User interface", {}),
    "js_modal_lightbox_gamepad_repeat": (250, "Gamepad repeat period, in milliseconds", "User interface", {}),
    "show_progress_in_title": (True, "Show generation progress in window title", "User interface", {}),
    "samplers_in_dropdown": (True, "Use dropdown for sampler selection instead of radio group", "User interface", {}),
    "dimensions_and_batch_together": (True, "Show Width/Height and Batch sliders in same row", "User interface", {}),
    "keyedit_precision_attention": (0.1, "Ctrl+up/down precision when editing (attention:1.1)", "User interface",
                                    {"minimum": 0.01, "maximum": 0.2}),
    "keyedit_precision_extra": (0.05, "Ctrl+up/down precision when editing <extra networks:0.9>", "User interface",
                                {"minimum": 0.01, "maximum": 0.2}),
    "keyedit_delimiters": (".,\\/!?%^*;:{}=`~()", "Ctrl+up/down word delimiters", "User interface", {}),
    "keyedit_move": (True, "Alt+left/right moves prompt elements", "User interface", {}),
    "quicksettings_list": (["sd_model_checkpoint"], "Quicksettings list", "User interface", {}),
    "ui_tab_order": ([], "UI tab order", "User interface", {}),
    "hidden_tabs": ([], "Hidden UI tabs", "User interface", {}),
    "ui_reorder_list": ([], "txt2img/img2img UI item order", "User interface", {}),
    "hires_fix_show_sampler": (False, "Hires fix: show hires checkpoint and sampler selection", "User interface", {}),
    "hires_fix_show_prompts": (False, "Hires fix: show hires prompt and negative prompt", "User interface", {}),
    "disable_token_counters": (False, "Disable prompt token counters", "User interface", {}),
    # Infotext
    "add_user_name_to_info": (False, "Add user name to generation information when authenticated", "Infotext", {}),
    "disable_weights_auto_swap": (True, "Disregard checkpoint information from pasted infotext", "Infotext", {}),
    # Live previews
    "show_progressbar": (True, "Show progressbar", "Live previews", {}),
    "live_previews_image_format": ("png", "Live preview file format", "Live previews",
                                   {"choices": ["jpeg", "png", "webp"]}),
    "show_progress_grid": (True, "Show previews of all images generated in a batch as a grid", "Live previews", {}),
    "show_progress_type": ("Approx NN", "Live preview method", "Live previews",
                           {"choices": ["Full", "Approx NN", "Approx cheap", "TAESD"]}),
    "live_preview_allow_lowvram_full": (False, "Allow Full live preview method with lowvram/medvram",
                                        "Live previews", {}),
    "live_preview_content": ("Prompt", "Live preview subject", "Live previews",
                             {"choices": ["Combined", "Prompt", "Negative prompt"]}),
    "live_preview_refresh_period": (1000, "Progressbar and preview update period, in milliseconds",
                                    "Live previews", {}),
    "live_preview_fast_interrupt": (False, "Return image with chosen live preview method on interrupt",
                                    "Live previews", {}),
    # Sampler parameters
    "hide_samplers": ([], "Hide samplers in user interface", "Sampler parameters", {}),
    "eta_ddim": (0.0, "Eta for DDIM", "Sampler parameters", {"minimum": 0.0, "maximum": 1.0}),
    "ddim_discretize": ("uniform", "img2img DDIM discretize", "Sampler parameters", {"choices": ["uniform", "quad"]}),
    "s_churn": (0.0, "sigma churn", "Sampler parameters", {"minimum": 0.0, "maximum": 100.0}),
    "s_tmin": (0.0, "sigma tmin", "Sampler parameters", {"minimum": 0.0, "maximum": 10.0}),
    "s_tmax": (0.0, "sigma tmax", "Sampler parameters", {"minimum": 0.0, "maximum": 999.0}),
    "s_noise": (1.0, "sigma noise", "Sampler parameters", {"minimum": 0.0, "maximum": 1.1}),
    "k_sched_type": ("Automatic", "Scheduler type", "Sampler parameters",
                     {"choices": ["Automatic", "karras", "exponential", "polyexponential"]}),
    "sigma_min": (0.0, "sigma min", "Sampler parameters", {}),
    "sigma_max": (0.0, "sigma max", "Sampler parameters", {}),
    "rho": (0.0, "rho", "Sampler parameters", {}),
    "always_discard_next_to_last_sigma": (False, "Always discard next-to-last sigma", "Sampler parameters", {}),
    "uni_pc_variant": ("bh1", "UniPC variant", "Sampler parameters", {"choices": ["bh1", "bh2", "vary_coeff"]}),
    "uni_pc_skip_type": ("time_uniform", "UniPC skip type", "Sampler parameters",
                         {"choices": ["time_uniform", "time_quadratic", "logSNR"]}),
    "uni_pc_order": (3, "UniPC order", "Sampler parameters", {"minimum": 1, "maximum": 50}),
    "uni_pc_lower_order_final": (True, "UniPC lower order final", "Sampler parameters", {}),
    # Postprocessing
    "postprocessing_enable_in_main_ui": ([], "Enable postprocessing operations in txt2img and img2img tabs",
                                         "Postprocessing", {}),
    "postprocessing_operation_order": ([], "Postprocessing operation order", "Postprocessing", {}),
    "upscaling_max_images_in_cache": (5, "Maximum number of images in upscaling cache", "Postprocessing",
                                      {"minimum": 0, "maximum": 10}),
    # Hidden options
    "disabled_extensions": ([], "Disable these extensions", "Hidden options", {}),
    "disable_all_extensions": ("none", "Disable all extensions (preserves the list of disabled extensions)",
                               "Hidden options", {"choices": ["none", "extra", "all"]}),
    "restore_config_state_file": ("", "Config state file to restore from, under 'config-states/' folder",
                                  "Hidden options", {}),
}


def register_a1111_options(options: Options) -> None:
    """Register every key of `HONOURED` and `STORED` not registered yet (a host or extension registration wins)."""
    for table, note in ((HONOURED, ""), (STORED, NO_EFFECT)):
        for key, (default, label, section, extra) in table.items():
            if key in options.infos:
                continue
            extra = dict(extra)
            extra.setdefault("comment", note)
            options.add(key, default, label, section, **extra)


def is_read_only(key: str) -> bool:
    """Whether clients' writes of `key` are ignored (values the WebUI itself maintains)."""
    return key == "sd_checkpoint_hash"
