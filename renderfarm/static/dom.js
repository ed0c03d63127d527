// Building the page's elements. Every string goes in as a text node (or an attribute set through the DOM), never
// as HTML: a scene object named `<img src=x onerror=alert(1)>` shows as those characters and runs nothing.

// el('li', {class: 'job', dataset: {mjid}}, 'text', childElement, ...)
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'class') node.className = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function setText(node, text) {
  node.textContent = text ?? '';
}

export function replaceChildren(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}
