"""The page's CSS and its one small script (given to ``launch(css=…, head=…)``).

Layout rules, each for a reason a person meets:
- wide screens: the settings on the left, the run column (buttons, progress, curves, samples, plan) on the
  right, sticky, so the field being edited, the plan it changes and the curves are in view together;
- narrow screens (a phone): one column, no sideways scrolling (tables and plots scroll inside themselves),
  and the Start / Stop bar fixed at the bottom of the screen, so it is always reachable;
- help text is a tip shown on hover or focus (an ⓘ after the label says there is one), not a paragraph
  under every field;
- folds (``gui.form_layout.fold``): the script keeps a closed fold's body ``hidden="until-found"``, which the
  browser's find searches and opens (``beforematch``), and toggles it when its heading is clicked;
- field error notes (``gui.form.Form.error_box``): the script draws each under its field from the one
  hidden box the server updates.
"""
from __future__ import annotations

NARROW = 820  # px: below this the page is one column (the run column's min width + the settings')

CSS = f"""
.loom-progress {{ padding: 4px; }}
.loom-headline {{ font-weight: 600; margin-bottom: 4px; }}
.loom-bar {{ height: 12px; background: var(--neutral-200); border-radius: 6px; overflow: hidden; }}
.loom-fill {{ height: 100%; background: var(--color-accent); transition: width 0.5s; }}
.loom-details {{ font-size: 0.9em; margin-top: 2px; opacity: 0.85; }}
.loom-field-error, .loom-field-error * {{ color: var(--error-text-color, #b91c1c) !important; }}
.loom-field-error {{ font-size: 0.9em; padding: 0 8px 4px; }}
.loom-hidden {{ display: none !important; }}
.block.loom-heading {{ padding: 0 !important; min-height: 0 !important; border-width: 0 !important;
  box-shadow: none !important; background: none !important; }}
.loom-heading .html-container, .loom-fold > div > .block .html-container {{ padding: 0 !important; }}
.loom-heading .loom-section {{ margin: 4px 0 0 2px !important; font-size: 0.95em; font-weight: 600; line-height: 1.2; }}
.loom-queue td, .loom-history td {{ padding: 2px 8px; vertical-align: top; }}
.loom-log-tail {{ font-size: 0.8em; max-height: 12em; overflow: auto; }}
#loom-title {{ align-self: center; }}
#loom-title h1 {{ font-size: 1.15em; margin: 0; white-space: nowrap; }}

/* compact fields: kohya_ss-like density, two screens per tab at most */
#settings-tabs .column, #settings-tabs .tabitem {{ gap: 6px; }}
#presets-area .block {{ padding: 6px 8px !important; }}
#fold-blocks-table .prose {{ max-height: 420px; overflow-y: auto; }}
.loom-row {{ gap: 8px !important; }}
.block.loom-field {{ padding: 6px 8px !important; }}
.loom-field input[type="text"], .loom-field textarea, .loom-field .wrap-inner {{ padding-top: 5px !important;
  padding-bottom: 5px !important; }}
.loom-field [data-testid="block-info"], .loom-field .label-text {{ font-size: 0.9em; margin-bottom: 4px; }}

/* help as a tip: hidden until the field is hovered or focused, then floating over what is below */
.block.loom-field {{ overflow: visible !important; position: relative; }}
.loom-field .info-text {{ display: none; }}
.loom-field:hover .info-text, .loom-field:focus-within .info-text {{
  display: block; position: absolute; z-index: 60; left: 0; right: 0; top: 100%; margin-top: 2px;
  padding: 6px 8px; border-radius: 6px; font-size: 0.85em; line-height: 1.35; min-width: 220px;
  background: var(--background-fill-primary); border: 1px solid var(--border-color-primary);
  box-shadow: 0 4px 14px rgba(0, 0, 0, 0.18); }}
.loom-field .has-info::after, .loom-field .label-text::after {{
  content: "i"; display: inline-block; width: 1.15em; height: 1.15em; line-height: 1.1em; margin-left: 4px;
  border: 1px solid currentColor; border-radius: 50%; text-align: center; font-size: 0.75em; font-style: italic;
  font-weight: 600; opacity: 0.5; vertical-align: 1px; }}

/* folds */
.loom-fold-head {{ width: 100%; text-align: left; font-weight: 600; font-size: 0.95em; padding: 6px 4px;
  margin-top: 8px; border-bottom: 1px solid var(--border-color-primary); cursor: pointer; background: none; }}
.loom-fold-head::before {{ content: "▶ "; font-size: 0.8em; }}
.loom-fold-head[aria-expanded="true"]::before {{ content: "▼ "; }}

/* tables and plots never widen the page */
.prose table {{ display: block; overflow-x: auto; max-width: 100%; }}
#dataset-table td, #dataset-table th {{ white-space: nowrap; }}
#plan-table table td, #plan-table table th {{ padding: 2px 6px; font-size: 0.88em; }}
#run-column .js-plotly-plot, #run-column .vega-embed {{ max-width: 100%; overflow-x: auto; }}

/* the run column: in view while the settings scroll */
#run-actions button {{ min-width: 0; padding-left: 6px; padding-right: 6px; }}
@media (min-width: {NARROW + 1}px) {{
  #run-column {{ position: sticky; top: 8px; align-self: flex-start; }}
}}
@media (max-width: {NARROW}px) {{
  #main-row {{ flex-direction: column; }}
  #main-row > div {{ min-width: 0 !important; width: 100% !important; }}
  #run-actions {{ position: fixed; left: 0; right: 0; bottom: 0; z-index: 100; margin: 0; padding: 6px;
    background: var(--background-fill-primary); border-top: 1px solid var(--border-color-primary); }}
  body {{ padding-bottom: 72px; }}
  .gradio-container {{ padding-left: 4px !important; padding-right: 4px !important; }}
}}
"""

HEAD = """
<script>
(() => {
  const bodyOf = (head) => head.closest(".loom-fold")?.querySelector(".loom-fold-body");
  const headOf = (body) => body.closest(".loom-fold")?.querySelector(".loom-fold-head");
  function setOpen(body, open) {
    if (open) body.removeAttribute("hidden"); else body.setAttribute("hidden", "until-found");
    headOf(body)?.setAttribute("aria-expanded", String(open));
  }
  function closeNew() {
    document.querySelectorAll(".loom-fold-body:not([data-loom-fold])").forEach((body) => {
      body.dataset.loomFold = "1";
      body.addEventListener("beforematch", () => setOpen(body, true));  // find-in-page opens it
      setOpen(body, false);
    });
  }
  // The field error notes arrive together, as JSON in the hidden #field-errors box; each is drawn under its
  // field (id "error-<key>"), and removed once the field is fine. A field in a tab not drawn yet gets its note
  // when the tab is drawn (this runs after every change to the page).
  function spreadErrors() {
    const data = document.querySelector("#field-errors .loom-errors-data");
    if (!data) return;
    let notes;
    try { notes = JSON.parse(data.textContent); } catch (error) { return; }
    document.querySelectorAll(".loom-field-error").forEach((note) => {
      if (!(note.dataset.key in notes)) note.remove();
    });
    for (const [key, html] of Object.entries(notes)) {
      const field = document.getElementById("setting-" + key);
      if (!field) continue;
      let note = document.getElementById("error-" + key);
      if (!note) {
        note = document.createElement("div");
        note.id = "error-" + key;
        note.className = "loom-field-error";
        note.dataset.key = key;
        note.setAttribute("role", "alert");
        field.appendChild(note);
      }
      if (note.dataset.html !== html) { note.innerHTML = html; note.dataset.html = html; }
    }
  }
  document.addEventListener("click", (event) => {
    const head = event.target.closest?.(".loom-fold-head");
    const body = head && bodyOf(head);
    if (body) setOpen(body, body.hasAttribute("hidden"));
  });
  new MutationObserver(() => { closeNew(); spreadErrors(); }).observe(document.documentElement,
                                                                     {childList: true, subtree: true});
})();
</script>
"""
