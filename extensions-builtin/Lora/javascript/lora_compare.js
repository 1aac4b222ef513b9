// The Lora card's "compare" action: a button on every card that sets the tab's Script to "X/Y/Z plot" with this
// LoRA's weight on the X axis (0, 0.25, 0.5, 0.75, 1), keeping the prompt and seed; the axis adds the LoRA's tag to
// the prompt when it is not there. Kept apart from lora_cards.js: it only adds a button (data-action="compare", which
// the card's own click handler leaves alone) and hands the request to the host's script presets
// (#{tab}_script_preset, see modules/ui_scripts.py).

"use strict";

(function() {
    const LABEL = "Compare weights in an X/Y/Z plot";

    function addCompareButtons(root) {
        for (const buttons of root.querySelectorAll(".lora-card-buttons")) {
            if (buttons.querySelector(".lora-card-compare")) {
                continue;
            }
            const button = document.createElement("button");
            button.type = "button";
            button.className = "lora-card-button lora-card-compare";
            button.dataset.action = "compare";
            button.title = LABEL;
            button.setAttribute("aria-label", LABEL);
            button.textContent = "\u229e";
            buttons.append(button);
        }
    }

    function compare(event) {
        const button = event.target.closest && event.target.closest(".lora-card-compare");
        if (!button) {
            return;
        }
        event.stopPropagation();
        event.preventDefault();
        const card = button.closest(".lora-card");
        const holder = button.closest("[data-tabname]");
        const tab = holder ? holder.dataset.tabname : "txt2img";
        const box = gradioApp().querySelector(`#${tab}_script_preset textarea, #${tab}_script_preset input`);
        if (!card || !box) {
            return;
        }
        box.value = JSON.stringify({script: "x/y/z plot", kind: "lora_compare", value: card.dataset.name,
            at: Date.now()});
        updateInput(box);
        // the cards are a tab beside "Generation": go back to it, where the plot's settings are
        const generation = gradioApp().querySelector(`#${tab}_generation_tab-button`);
        if (generation) {
            generation.click();
        }
        const list = gradioApp().querySelector(`#${tab}_script_list`);
        if (list) {
            list.scrollIntoView({block: "center"});
        }
    }

    document.addEventListener("click", compare, true);
    onUiUpdate(() => addCompareButtons(gradioApp()));
})();
