// Draws every element with class "chart": its figure is the JSON in the <script> element its data-figure names.
document.addEventListener("DOMContentLoaded", () => {
  for (const el of document.querySelectorAll(".chart")) {
    const source = document.getElementById(el.dataset.figure);
    if (!source || typeof Plotly === "undefined") continue;
    const figure = JSON.parse(source.textContent);
    Plotly.newPlot(el, figure.data, figure.layout, { displaylogo: false, responsive: true }).then(() => {
      el.dataset.drawn = "true";
    });
  }
});
