/**
 * A small element builder: attributes through setAttribute, children as
 * nodes or text (never parsed HTML), so nothing the server sends can become
 * markup, and the page runs under Trusted Types with no policy at all.
 */

type Attrs = Readonly<Record<string, string | boolean | undefined>>;
type Child = Node | string | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) if (child !== undefined && child !== false) el.append(child);
  return el;
}

let next = 0;
/** An id unique in the page, for label/aria references. */
export const uid = (prefix: string): string => `${prefix}-${++next}`;
