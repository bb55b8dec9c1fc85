// MathJax reads the \( ... \) and \[ ... \] that pymdownx.arithmatex (generic mode) leaves.
window.MathJax = {
  tex: {inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true, processEnvironments: true},
  options: {ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex"}
};
document$.subscribe(() => {
  if (window.MathJax && MathJax.typesetPromise) { MathJax.startupDocument && MathJax.typesetClear(); MathJax.typesetPromise(); }
});
