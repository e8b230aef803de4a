"""Edit keyword arrays in an XMP packet with a real XML parser, keeping everything else.

The packet is parsed with ``xml.dom.minidom`` (namespace aware, keeps prefixes, attribute order,
comments and whitespace), only the properties we own or keep in step are replaced, and the result is
wrapped in a fresh ``<?xpacket?>`` header/trailer with padding, reusing the original header's
attributes when there was one.
"""

from __future__ import annotations

import hashlib
import re
from typing import cast
from xml.dom import Node, minidom
from xml.parsers.expat import ExpatError

NS_X = "adobe:ns:meta/"
NS_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
NS_XMLNS = "http://www.w3.org/2000/xmlns/"
NS_XML = "http://www.w3.org/XML/1998/namespace"
NS_DC = "http://purl.org/dc/elements/1.1/"
NS_LR = "http://ns.adobe.com/lightroom/1.0/"
NS_DIGIKAM = "http://www.digikam.org/ns/1.0/"
NS_MSPHOTO = "http://ns.microsoft.com/photo/1.0/"
NS_MSPHOTO_ALT = "http://ns.microsoft.com/photo/1.0"  # seen in the wild without the slash
NS_MEDIAPRO = "http://ns.iview-multimedia.com/mediapro/1.0/"
NS_RTAGX = "http://ns.rtagx.dev/1.0/"
NS_XMPNOTE = "http://ns.adobe.com/xmp/note/"

PREFERRED_PREFIX = {
    NS_DC: "dc",
    NS_LR: "lr",
    NS_DIGIKAM: "digiKam",
    NS_MSPHOTO: "MicrosoftPhoto",
    NS_MEDIAPRO: "mediapro",
    NS_RTAGX: "rtagx",
    NS_XMPNOTE: "xmpNote",
}

PACKET_ID = "W5M0MpCehiHzreSzNTczkc9d"
DEFAULT_PADDING = 2048
_XPACKET_BEGIN = re.compile(rb"<\?xpacket\s+begin=")
_TOOLKIT = "rtagx"


class XmpError(ValueError):
    """The packet is not well-formed XML / RDF that we can edit safely."""


def _names(ns: str) -> tuple[str, ...]:
    return (NS_MSPHOTO, NS_MSPHOTO_ALT) if ns == NS_MSPHOTO else (ns,)


class XmpDoc:
    """One XMP packet (embedded or sidecar) as an editable DOM."""

    def __init__(self, doc: minidom.Document, header: str | None, trailer: str | None, prolog: str) -> None:
        self.doc = doc
        self.header = header  # the original <?xpacket begin=...?> PI data, or None
        self.trailer = trailer
        self.prolog = prolog  # an <?xml ...?> declaration that preceded the packet, kept for sidecars

    # ------------------------------------------------------------ construction

    @classmethod
    def new(cls) -> XmpDoc:
        text = (
            f'<x:xmpmeta xmlns:x="{NS_X}" x:xmptk="{_TOOLKIT}">\n'
            f' <rdf:RDF xmlns:rdf="{NS_RDF}">\n'
            f'  <rdf:Description rdf:about=""/>\n'
            f" </rdf:RDF>\n</x:xmpmeta>"
        )
        return cls(minidom.parseString(text), None, None, "")

    @classmethod
    def parse(cls, data: bytes | str) -> XmpDoc:
        if isinstance(data, str):
            data = data.encode("utf-8")
        data = data.rstrip(b"\x00 \t\r\n")
        if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
            raise XmpError("XMP must not carry a DOCTYPE or entity declarations")
        if not data.strip():
            return cls.new()
        try:
            doc = minidom.parseString(data)
        except ExpatError as e:
            raise XmpError(f"not well-formed XML: {e}") from None
        header = trailer = None
        for node in doc.childNodes:
            if node.nodeType == Node.PROCESSING_INSTRUCTION_NODE and node.target == "xpacket":
                if _XPACKET_BEGIN.match(f"<?xpacket {node.data}?>".encode()):
                    header = node.data
                else:
                    trailer = node.data
        head = data[:200].lstrip(b"\xef\xbb\xbf")
        prolog = ""
        if head.startswith(b"<?xml"):
            end = head.find(b"?>")
            prolog = head[: end + 2].decode("utf-8", "replace") if end > 0 else ""
        self = cls(doc, header, trailer, prolog)
        if self._rdf() is None:
            raise XmpError("no rdf:RDF element")
        return self

    # ---------------------------------------------------------------- queries

    def _rdf(self) -> minidom.Element | None:
        root = self.doc.documentElement
        if root is None:
            return None
        if (root.namespaceURI, root.localName) == (NS_RDF, "RDF"):
            return root
        for el in root.getElementsByTagNameNS(NS_RDF, "RDF"):
            return el
        return None

    def descriptions(self) -> list[minidom.Element]:
        rdf = self._rdf()
        if rdf is None:
            return []
        return [c for c in _elements(rdf) if (c.namespaceURI, c.localName) == (NS_RDF, "Description")]

    def _props(self, ns: str, name: str) -> list[minidom.Element]:
        out = []
        for desc in self.descriptions():
            for c in desc.childNodes:
                if c.nodeType == Node.ELEMENT_NODE and c.localName == name and c.namespaceURI in _names(ns):
                    out.append(c)
        return out

    def _attr_props(self, ns: str, name: str) -> list[tuple[minidom.Element, minidom.Attr]]:
        """The property written as an attribute of rdf:Description (RDF shorthand for one simple
        value; exiftool reads it as the property's value, so a person's keyword can sit there)."""
        out = []
        for desc in self.descriptions():
            for a in _attributes(desc):
                if a.localName == name and a.namespaceURI in _names(ns):
                    out.append((desc, a))
        return out

    def get_array(self, ns: str, name: str) -> list[str] | None:
        """Items of an array property (Bag/Seq/Alt), or None when the property is absent. A single
        value written as an attribute, plain text or an ``rdf:value`` resource counts as one item."""
        props = self._props(ns, name)
        attrs = self._attr_props(ns, name)
        if not props and not attrs:
            return None
        out: list[str] = [a.value.strip() for _, a in attrs if a.value.strip()]
        for prop in props:
            container = _first_child(prop, NS_RDF, ("Bag", "Seq", "Alt"))
            if container is None:
                text = (_li_value(prop) or "").strip()
                if text:
                    out.append(text)
                continue
            for li in container.childNodes:
                if li.nodeType == Node.ELEMENT_NODE and (li.namespaceURI, li.localName) == (NS_RDF, "li"):
                    value = _li_value(li)
                    if value is not None:
                        out.append(value)
        return out

    def array_kind(self, ns: str, name: str) -> str | None:
        props = self._props(ns, name)
        if not props:
            return "text" if self._attr_props(ns, name) else None
        container = _first_child(props[0], NS_RDF, ("Bag", "Seq", "Alt"))
        return container.localName if container is not None else "text"

    # ---------------------------------------------------------------- editing

    def set_array(self, ns: str, name: str, values: list[str], kind: str = "Bag") -> None:
        """Replace (or create, or with no values remove) an array property, in place. An attribute
        form of the property goes: its value is among ``values`` (read by :meth:`get_array`), and
        the property must not be written twice."""
        props = self._props(ns, name)
        attrs = self._attr_props(ns, name)
        for holder, attr in attrs:
            holder.removeAttributeNode(attr)
        if not values:
            for p in props:
                _remove_with_indent(p)
            return
        if props:
            first = props[0]
            keep = self._items_by_value(props)
            for p in props[1:]:
                _remove_with_indent(p)
            desc = _parent(first)
            ns_uri = first.namespaceURI or ns
            new = self._build_array(desc, ns_uri, first.tagName, values, kind, _indent_of(first), keep)
            # Qualifiers and namespace declarations rtagx does not own; not the RDF attributes that
            # described the old single-value form (rdf:parseType="Resource" around a Bag is no RDF).
            _copy_attributes(first, new, skip_ns=NS_RDF)
            old_container = _first_child(first, NS_RDF, ("Bag", "Seq", "Alt"))
            new_container = _first_child(new, NS_RDF, (kind,))
            if old_container is not None and new_container is not None and old_container.localName == kind:
                _copy_attributes(old_container, new_container)
            desc.replaceChild(new, first)
            return
        desc = attrs[0][0] if attrs else self._description_for(ns)
        prefix = self._prefix_for(desc, ns)
        indent = _child_indent(desc)
        new = self._build_array(desc, ns, f"{prefix}:{name}", values, kind, indent)
        _append_with_indent(desc, new, indent)

    def _items_by_value(self, props: list[minidom.Element]) -> dict[str, list[minidom.Element]]:
        """The existing rdf:li items of these properties by value: kept items keep their qualifiers
        (``xml:lang``, ``rdf:parseType`` structures), which rtagx does not own."""
        out: dict[str, list[minidom.Element]] = {}
        for prop in props:
            container = _first_child(prop, NS_RDF, ("Bag", "Seq", "Alt"))
            for li in container.childNodes if container is not None else []:
                if li.nodeType == Node.ELEMENT_NODE and (li.namespaceURI, li.localName) == (NS_RDF, "li"):
                    value = _li_value(li)
                    if value is not None:
                        out.setdefault(value, []).append(li)
        return out

    def _build_array(
        self,
        desc: minidom.Element,
        ns: str,
        qname: str,
        values: list[str],
        kind: str,
        indent: str,
        keep: dict[str, list[minidom.Element]] | None = None,
    ) -> minidom.Element:
        doc = self.doc
        rdf = self._rdf_prefix(desc)
        prop = doc.createElementNS(ns, qname)
        container = doc.createElementNS(NS_RDF, f"{rdf}:{kind}")
        prop.appendChild(doc.createTextNode(indent + " "))
        prop.appendChild(container)
        prop.appendChild(doc.createTextNode(indent))
        for v in values:
            if keep and keep.get(v):
                li = cast(minidom.Element, keep[v].pop(0).cloneNode(True))
            else:
                li = doc.createElementNS(NS_RDF, f"{rdf}:li")
                li.appendChild(doc.createTextNode(v))
            container.appendChild(doc.createTextNode(indent + "  "))
            container.appendChild(li)
        container.appendChild(doc.createTextNode(indent + " "))
        return prop

    def _rdf_prefix(self, el: minidom.Element) -> str:
        """A prefix bound to the RDF namespace at ``el``; declared on ``el`` when the packet has
        none (RDF written as the default namespace): an unbound prefix makes the packet unreadable."""
        found = _lookup_prefix(el, NS_RDF)
        if found:
            return found
        prefix, k = "rdf", 1
        while _lookup_ns(el, prefix) is not None:
            k += 1
            prefix = f"rdf{k}"
        el.setAttributeNS(NS_XMLNS, f"xmlns:{prefix}", NS_RDF)
        return prefix

    def _description_for(self, ns: str) -> minidom.Element:
        descs = self.descriptions()
        for d in descs:
            if any(a.value in _names(ns) for a in _xmlns_attrs(d)):
                return d
        if descs:
            return descs[0]
        rdf = self._rdf()
        if rdf is None:
            raise XmpError("no rdf:RDF element")
        prefix = self._rdf_prefix(rdf)
        d = self.doc.createElementNS(NS_RDF, f"{prefix}:Description")
        d.setAttributeNS(NS_RDF, f"{prefix}:about", "")
        _append_with_indent(rdf, d, _child_indent(rdf))
        return d

    def _prefix_for(self, desc: minidom.Element, ns: str) -> str:
        """A prefix bound to ``ns`` in scope of ``desc``; declares one on ``desc`` when needed."""
        for uri in _names(ns):
            found = _lookup_prefix(desc, uri)
            if found:
                return found
        base = PREFERRED_PREFIX.get(ns, "ns")
        prefix, k = base, 1
        while _lookup_ns(desc, prefix) not in (None, ns):
            k += 1
            prefix = f"{base}{k}"
        desc.setAttributeNS(NS_XMLNS, f"xmlns:{prefix}", ns)
        return prefix

    def drop_unused_namespace(self, ns: str) -> None:
        """Remove our own namespace declaration once nothing uses it any more."""
        for d in self.descriptions():
            for a in list(_xmlns_attrs(d)):
                if a.value == ns and not _uses_ns(d, ns):
                    d.removeAttributeNode(a)

    def is_empty(self) -> bool:
        """No property left (only ``rdf:about`` and namespace declarations): the packet says nothing."""
        for desc in self.descriptions():
            if _elements(desc):
                return False
            if any(not a.name.startswith("xmlns") and a.namespaceURI != NS_RDF for a in _attributes(desc)):
                return False
        return True

    # ------------------------------------------------------- extended XMP

    def extended_guid(self) -> str | None:
        """The GUID of the extended packet this (main) packet points to, if any."""
        for desc in self.descriptions():
            for uri in (NS_XMPNOTE,):
                if desc.hasAttributeNS(uri, "HasExtendedXMP"):
                    return desc.getAttributeNS(uri, "HasExtendedXMP")
        values = self.get_array(NS_XMPNOTE, "HasExtendedXMP")
        return values[0] if values else None

    def drop_extended_guid(self) -> None:
        for desc in self.descriptions():
            if desc.hasAttributeNS(NS_XMPNOTE, "HasExtendedXMP"):
                desc.removeAttributeNS(NS_XMPNOTE, "HasExtendedXMP")
        for prop in self._props(NS_XMPNOTE, "HasExtendedXMP"):
            _remove_with_indent(prop)
        self.drop_unused_namespace(NS_XMPNOTE)

    def merge(self, other: XmpDoc) -> None:
        """Bring every property of ``other`` (an extended packet) into this packet's first
        description, with the namespace declarations it needs. A prefix the two packets bind to
        different namespaces is declared again on what comes in (or, for an attribute, another
        prefix is used): minidom writes prefixes as they are, so the property would otherwise land in
        this packet's namespace of that name."""
        target = self._description_for(NS_RDF)
        for desc in other.descriptions():
            clashes: list[tuple[str, str]] = []
            for name, uri in _xmlns_in_scope(desc):  # declared on rdf:RDF or x:xmpmeta too
                bound = _lookup_ns(target, name.split(":", 1)[1])
                if bound is None:
                    target.setAttributeNS(NS_XMLNS, name, uri)
                elif bound != uri:
                    clashes.append((name, uri))
            for a in _property_attrs(desc):
                if not target.hasAttributeNS(a.namespaceURI, a.localName):
                    prefix = self._prefix_for(target, a.namespaceURI or "")
                    target.setAttributeNS(a.namespaceURI, f"{prefix}:{a.localName}", a.value)
            indent = _child_indent(target)
            for c in _elements(desc):
                imported = self.doc.importNode(c, True)
                for name, uri in clashes:
                    imported.setAttributeNS(NS_XMLNS, name, uri)
                _append_with_indent(target, imported, indent)

    def split_extended(self, limit: int, padding: int = DEFAULT_PADDING) -> tuple[bytes, bytes | None]:
        """This packet as a main packet of at most ``limit`` bytes plus, when it does not fit, an
        extended packet holding the largest properties (moved largest first, as Adobe's and
        exiftool's writers do). The main packet names the extended one by the MD5 of its bytes."""
        for pad in (padding, 512, 0):
            packet = self.packet(padding=pad)
            if len(packet) <= limit:
                return packet, None
        main = XmpDoc(cast(minidom.Document, self.doc.cloneNode(True)), self.header, self.trailer, self.prolog)
        ext = XmpDoc.new()
        ext_desc = ext.descriptions()[0]
        # Properties are elements or, as Adobe's XMP core writes simple values by default (a phone
        # portrait's GImage:Data), attributes of rdf:Description: both can move.
        movable: list[minidom.Element | minidom.Attr] = []
        for d in main.descriptions():
            movable += _elements(d)
            movable += [
                a for a in _property_attrs(d) if (a.namespaceURI, a.localName) != (NS_XMPNOTE, "HasExtendedXMP")
            ]
        movable.sort(key=_xml_size, reverse=True)
        guid = "0" * 32
        for item in movable:
            holder = cast(minidom.Element, item.ownerElement) if isinstance(item, minidom.Attr) else _parent(item)
            for name, uri in _xmlns_in_scope(holder):
                if not ext_desc.hasAttribute(name):
                    ext_desc.setAttributeNS(NS_XMLNS, name, uri)
            if isinstance(item, minidom.Attr):
                holder.removeAttributeNode(item)
                ext_desc.setAttributeNS(item.namespaceURI, item.name, item.value)
            else:
                _remove_with_indent(item)
                _append_with_indent(ext_desc, ext.doc.importNode(item, True), "\n   ")
            main.drop_extended_guid()
            main._set_guid(guid)
            if len(main.packet(padding=0)) <= limit:
                break
        else:
            raise XmpError("the XMP does not fit a JPEG even with every property in extended XMP")
        extended = ext.body().encode("utf-8")
        guid = hashlib.md5(extended).hexdigest().upper()
        main.drop_extended_guid()
        main._set_guid(guid)
        for pad in (padding, 512, 0):
            packet = main.packet(padding=pad)
            if len(packet) <= limit:
                return packet, extended
        raise XmpError("the main XMP packet does not fit a JPEG segment")

    def _set_guid(self, guid: str) -> None:
        desc = self._description_for(NS_XMPNOTE)
        prefix = self._prefix_for(desc, NS_XMPNOTE)
        desc.setAttributeNS(NS_XMPNOTE, f"{prefix}:HasExtendedXMP", guid)

    # ----------------------------------------------------------- serializing

    def body(self) -> str:
        root = self.doc.documentElement
        return root.toxml() if root is not None else ""

    def packet(self, padding: int = DEFAULT_PADDING) -> bytes:
        """A full XMP packet: xpacket header, the XML, whitespace padding, writable trailer."""
        header = self.header or f'begin="\ufeff" id="{PACKET_ID}"'
        trailer = 'end="w"'  # we rewrite the whole file: the packet is writable again
        pad = ""
        if padding > 0:
            line = " " * 99 + "\n"
            pad = line * (padding // 100) + " " * (padding % 100)
        text = f"<?xpacket {header}?>\n{self.body()}\n{pad}<?xpacket {trailer}?>"
        return text.encode("utf-8")

    def sidecar_bytes(self) -> bytes:
        """A sidecar file: keeps an original <?xml?> declaration; always carries the xpacket wrapper."""
        out = self.packet(padding=0)
        if self.prolog:
            out = self.prolog.encode("utf-8") + b"\n" + out
        return out + b"\n"


# ------------------------------------------------------------------- helpers


def _first_child(el: minidom.Element, ns: str, names: tuple[str, ...]) -> minidom.Element | None:
    for c in el.childNodes:
        if c.nodeType == Node.ELEMENT_NODE and c.namespaceURI == ns and c.localName in names:
            return c
    return None


def _text(el: minidom.Node) -> str:
    return "".join(c.data for c in el.childNodes if c.nodeType in (Node.TEXT_NODE, Node.CDATA_SECTION_NODE))


def _li_value(li: minidom.Element) -> str | None:
    """The text of an item (or a simple property): plain text, or the ``rdf:value`` of a qualified
    value, written as an attribute, a child, or inside a nested rdf:Description. None: a struct."""
    if li.hasAttributeNS(NS_RDF, "value"):
        return li.getAttributeNS(NS_RDF, "value")
    value_el = _first_child(li, NS_RDF, ("value",))
    if value_el is not None:
        return _text(value_el)
    nested = _first_child(li, NS_RDF, ("Description",))
    if nested is not None and len(_elements(li)) == 1:
        if nested.hasAttributeNS(NS_RDF, "value"):
            return nested.getAttributeNS(NS_RDF, "value")
        value_el = _first_child(nested, NS_RDF, ("value",))
        if value_el is not None:
            return _text(value_el)
    if any(c.nodeType == Node.ELEMENT_NODE for c in li.childNodes):
        return None  # a struct, not a text item
    return _text(li)


def _elements(parent: minidom.Node) -> list[minidom.Element]:
    return [c for c in parent.childNodes if c.nodeType == Node.ELEMENT_NODE]


def _parent(el: minidom.Node) -> minidom.Element:
    """The element holding ``el`` (XMP properties and items always sit inside an element)."""
    return cast(minidom.Element, el.parentNode)


def _attributes(el: minidom.Element) -> list[minidom.Attr]:
    return [cast(minidom.Attr, el.attributes.item(i)) for i in range(el.attributes.length)]


def _copy_attributes(source: minidom.Element, target: minidom.Element, skip_ns: str | None = None) -> None:
    for a in _attributes(source):
        if not target.hasAttribute(a.name) and (skip_ns is None or a.namespaceURI != skip_ns):
            target.setAttributeNS(a.namespaceURI, a.name, a.value)


def _xmlns_attrs(el: minidom.Element) -> list[minidom.Attr]:
    return [a for a in _attributes(el) if a.name.startswith("xmlns:")]


def _property_attrs(desc: minidom.Element) -> list[minidom.Attr]:
    """Attributes of an rdf:Description that are properties (not namespace declarations, rdf:about
    or xml:lang)."""
    return [
        a for a in _attributes(desc) if not a.name.startswith("xmlns") and a.namespaceURI not in (None, NS_RDF, NS_XML)
    ]


def _xml_size(item: minidom.Element | minidom.Attr) -> int:
    if isinstance(item, minidom.Attr):
        return len(item.name) + len(item.value) + 4
    return len(item.toxml())


def _xmlns_in_scope(el: minidom.Element) -> list[tuple[str, str]]:
    """Namespace declarations in scope at ``el`` (``xmlns:p`` name, URI), the innermost of each."""
    seen: dict[str, str] = {}
    for node in _ancestors(el):
        for a in _xmlns_attrs(node):
            seen.setdefault(a.name, a.value)
    return list(seen.items())


def _ancestors(el: minidom.Node) -> list[minidom.Element]:
    """``el`` (when an element) and the elements above it, innermost first."""
    out = []
    node: minidom.Node | None = el
    while node is not None and node.nodeType == Node.ELEMENT_NODE:
        out.append(cast(minidom.Element, node))
        node = node.parentNode
    return out


def _lookup_prefix(el: minidom.Node, uri: str) -> str | None:
    for node in _ancestors(el):
        for a in _xmlns_attrs(node):
            if a.value == uri:
                prefix = a.name.split(":", 1)[1]
                if _lookup_ns(el, prefix) == uri:  # not shadowed lower down
                    return prefix
    return None


def _lookup_ns(el: minidom.Node, prefix: str) -> str | None:
    for node in _ancestors(el):
        if node.hasAttribute(f"xmlns:{prefix}"):
            return node.getAttribute(f"xmlns:{prefix}")
    return None


def _uses_ns(el: minidom.Element, ns: str) -> bool:
    if any(c.namespaceURI == ns for c in el.getElementsByTagName("*")):
        return True
    return any(a.namespaceURI == ns for a in _attributes(el))


def _indent_of(el: minidom.Node) -> str:
    prev = el.previousSibling
    if prev is not None and prev.nodeType == Node.TEXT_NODE and "\n" in prev.data and not prev.data.strip():
        return "\n" + prev.data.rsplit("\n", 1)[1]
    return "\n   "


def _child_indent(parent: minidom.Element) -> str:
    for c in parent.childNodes:
        if c.nodeType == Node.ELEMENT_NODE:
            return _indent_of(c)
    base = _indent_of(parent)
    return base + " "


def _append_with_indent(parent: minidom.Element, el: minidom.Element, indent: str) -> None:
    doc = cast(minidom.Document, parent.ownerDocument)
    last = parent.lastChild
    if last is not None and last.nodeType == Node.TEXT_NODE and not last.data.strip():
        parent.insertBefore(doc.createTextNode(indent), last)
        parent.insertBefore(el, last)
    else:
        parent.appendChild(doc.createTextNode(indent))
        parent.appendChild(el)
        parent.appendChild(doc.createTextNode(_indent_of(parent) if parent.parentNode else "\n"))


def _remove_with_indent(el: minidom.Element) -> None:
    parent = _parent(el)
    prev = el.previousSibling
    if prev is not None and prev.nodeType == Node.TEXT_NODE and not prev.data.strip():
        parent.removeChild(prev)
    parent.removeChild(el)
