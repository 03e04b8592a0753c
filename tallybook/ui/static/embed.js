/* <tallybook-usage server="https://billing.example.com" token="tbp_…"></tallybook-usage>
   A web component that embeds a customer's usage portal page in an isolated iframe. */
"use strict";

(() => {
  if (customElements.get("tallybook-usage")) return;

  class TallybookUsage extends HTMLElement {
    static get observedAttributes() {
      return ["server", "token", "height"];
    }

    connectedCallback() {
      this.render();
    }

    attributeChangedCallback() {
      if (this.isConnected) this.render();
    }

    render() {
      const token = this.getAttribute("token");
      if (!token) return;
      const server = (this.getAttribute("server") || "").replace(/\/+$/, "");
      const frame = document.createElement("iframe");
      frame.src = `${server}/portal?token=${encodeURIComponent(token)}`;
      frame.title = "Usage";
      frame.referrerPolicy = "no-referrer";
      frame.style.width = "100%";
      frame.style.border = "0";
      frame.style.height = this.getAttribute("height") || "640px";
      const shadow = this.shadowRoot || this.attachShadow({ mode: "open" });
      shadow.replaceChildren(frame);
    }
  }

  customElements.define("tallybook-usage", TallybookUsage);
})();
