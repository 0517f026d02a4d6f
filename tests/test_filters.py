"""nc_server.filters: subtree / xpath filters to libyang XPaths, and selecting data with them.

Runs on libyang alone (no server): tests/yang/filter-test*.yang.
"""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import libyang
import pytest
from lxml import etree

from nc_server import filters
from nc_server.filters import FilterError, select, subtree_to_xpaths, xpaths_from_select

YANG = Path(__file__).resolve().parent / "yang"
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
FT = "urn:trustplane:test:filter-test"
AUG = "urn:trustplane:test:filter-test-aug"

DATA = f"""
<top xmlns="{FT}" xmlns:ft="{FT}">
  <users>
    <user><name>root</name><type>superuser</type><full-name>Charlie Root</full-name>
      <company-info><dept>1</dept><id>1</id></company-info></user>
    <user><name>fred</name><type>admin</type><full-name>Fred Flintstone</full-name>
      <company-info><dept>2</dept><id>2</id></company-info></user>
    <user><name>barney</name><type>admin</type><full-name>Barney Rubble</full-name>
      <company-info><dept>2</dept><id>3</id></company-info></user>
  </users>
  <name>the-top</name>
  <tags>red</tags><tags>green</tags><tags>blue</tags>
  <item><name>a</name><val>1</val><descr>first</descr><kind>ft:kind-a</kind>
    <flags>x</flags><flags>y</flags><sub><a>a1</a><b>b1</b></sub>
    <extra xmlns="{AUG}">e-a</extra><aug-box xmlns="{AUG}"><x>xa</x></aug-box></item>
  <item><name>b</name><val>2</val><descr>second</descr><kind>ft:kind-b</kind>
    <sub><a>a2</a></sub><extra xmlns="{AUG}">e-b</extra></item>
  <item><name>it's</name><val>3</val></item>
  <item><name>say "it's"</name><val>4</val></item>
  <item><name>c</name><val>5</val><descr>first</descr></item>
  <multi><k1>x</k1><k2>1</k2><data>x1</data></multi>
  <multi><k1>x</k1><k2>2</k2><data>x2</data></multi>
  <multi><k1>y</k1><k2>1</k2><data>y1</data></multi>
  <seq><id>s1</id><v>1</v></seq><seq><id>s2</id><v>2</v></seq><seq><id>s3</id><v>3</v></seq>
  <order-ll>o1</order-ll><order-ll>o2</order-ll><order-ll>o3</order-ll>
  <speed>100</speed>
  <blob><anything>goes</anything></blob>
  <state><counter>42</counter>
    <session><id>1</id><peer>p1</peer></session><session><id>2</id><peer>p2</peer></session></state>
  <name xmlns="{AUG}">aug-name</name>
</top>
<top xmlns="{AUG}"><note>hello</note></top>
<top-leaf xmlns="{FT}">tl</top-leaf>
<top-ll xmlns="{FT}">l1</top-ll><top-ll xmlns="{FT}">l2</top-ll>
"""


@pytest.fixture(scope="module")
def ctx():
    c = libyang.Context(str(YANG))
    for name in ("filter-test", "filter-test-aug"):
        c.load_module(name)
    yield c
    c.destroy()


@pytest.fixture(scope="module")
def data(ctx):
    tree = ctx.parse_data_mem(DATA, "xml", strict=True, parse_only=True)
    yield tree
    tree.free()


def flt(body: str) -> etree._Element:
    return etree.fromstring(f'<filter xmlns="{NC}" type="subtree">{body}</filter>')


def canon(xml: str | None):
    """Order-insensitive structural form of an XML fragment (several top-level elements allowed)."""
    if not xml:
        return []
    root = etree.fromstring(f"<r>{xml}</r>", etree.XMLParser(remove_blank_text=True))

    def one(el):
        kids = [one(c) for c in el if isinstance(c.tag, str)]
        text = (el.text or "").strip() if not kids else ""
        return (el.tag, text, tuple(sorted(kids)))

    return sorted(one(c) for c in root)


def printed(tree) -> str | None:
    return tree.print_mem("xml", with_siblings=True) if tree is not None else None


def run(data, ctx, body: str) -> tuple[list[str], str | None]:
    xpaths = subtree_to_xpaths(flt(body), ctx)
    out = select(data, xpaths, ctx)
    try:
        return xpaths, printed(out)
    finally:
        if out is not None:
            out.free()


def check(data, ctx, body: str, expected: str | None) -> list[str]:
    xpaths, got = run(data, ctx, body)
    assert canon(got) == canon(expected), f"xpaths: {xpaths}\ngot:\n{got}"
    return xpaths


def top(inner: str) -> str:
    return f'<top xmlns="{FT}">{inner}</top>'


# ----------------------------------------------------------------------------------
# RFC 6241 section 6.4 examples


def test_empty_filter_selects_nothing(data, ctx):
    assert subtree_to_xpaths(flt(""), ctx) == []
    assert subtree_to_xpaths(flt("  <!-- nothing -->\n "), ctx) == []
    assert select(data, [], ctx) is None
    assert select(None, ["/filter-test:top"], ctx) is None


def test_6_4_3_entire_subtree(data, ctx):
    xpaths = check(data, ctx, top("<users/>"), top("""
        <users>
          <user><name>root</name><type>superuser</type><full-name>Charlie Root</full-name>
            <company-info><dept>1</dept><id>1</id></company-info></user>
          <user><name>fred</name><type>admin</type><full-name>Fred Flintstone</full-name>
            <company-info><dept>2</dept><id>2</id></company-info></user>
          <user><name>barney</name><type>admin</type><full-name>Barney Rubble</full-name>
            <company-info><dept>2</dept><id>3</id></company-info></user>
        </users>"""))
    assert xpaths == ["/filter-test:top/users"]


def test_6_4_4_all_name_elements(data, ctx):
    check(data, ctx, top("<users><user><name/></user></users>"), top("""
        <users><user><name>root</name></user><user><name>fred</name></user>
               <user><name>barney</name></user></users>"""))


def test_6_4_5_one_specific_entry(data, ctx):
    xpaths = check(data, ctx, top("<users><user><name>fred</name></user></users>"), top("""
        <users><user><name>fred</name><type>admin</type><full-name>Fred Flintstone</full-name>
          <company-info><dept>2</dept><id>2</id></company-info></user></users>"""))
    assert xpaths == ["/filter-test:top/users/user[name='fred']"]


def test_6_4_6_specific_elements_of_an_entry(data, ctx):
    check(data, ctx, top("<users><user><name>fred</name><type/><full-name/></user></users>"), top("""
        <users><user><name>fred</name><type>admin</type><full-name>Fred Flintstone</full-name></user></users>"""))


def test_6_4_7_multiple_subtrees(data, ctx):
    xpaths = check(data, ctx, top("""
        <users>
          <user><name>root</name><company-info/></user>
          <user><name>fred</name><company-info><id/></company-info></user>
          <user><name>barney</name><type>superuser</type><company-info><dept/></company-info></user>
        </users>"""), top("""
        <users>
          <user><name>root</name><company-info><dept>1</dept><id>1</id></company-info></user>
          <user><name>fred</name><company-info><id>2</id></company-info></user>
        </users>"""))
    # barney is not a superuser: the content match is a condition on the entry
    assert "/filter-test:top/users/user[name='barney'][type='superuser']/company-info/dept" in xpaths


def test_content_match_outputs_itself_with_selection_siblings(data, ctx):
    # the content match nodes (key or not) are output next to the selected ones
    check(data, ctx, top("<users><user><name>root</name><type>superuser</type><full-name/></user></users>"),
          top("""<users><user><name>root</name><type>superuser</type>
                 <full-name>Charlie Root</full-name></user></users>"""))


def test_content_match_false_selects_nothing(data, ctx):
    check(data, ctx, top("<users><user><name>wilma</name></user></users>"), None)
    check(data, ctx, top("<users><user><name>fred</name><type>superuser</type><full-name/></user></users>"), None)


def test_content_match_whitespace_is_trimmed(data, ctx):
    check(data, ctx, top("<users><user><name>\n   fred  \n</name><type/></user></users>"),
          top("<users><user><name>fred</name><type>admin</type></user></users>"))
    # whitespace only: a selection node
    check(data, ctx, top("<name>  \n </name>"), top("<name>the-top</name>"))


def test_several_content_matches_are_anded(data, ctx):
    xpaths = check(data, ctx, top("<item><descr>first</descr><val>5</val></item>"),
                   top("<item><name>c</name><val>5</val><descr>first</descr></item>"))
    assert xpaths == ["/filter-test:top/item[descr='first'][val='5']"]
    check(data, ctx, top("<item><descr>first</descr><val>2</val></item>"), None)


# ----------------------------------------------------------------------------------
# namespaces


def test_namespace_selects_only_that_module(data, ctx):
    assert subtree_to_xpaths(flt(top("<name/>")), ctx) == ["/filter-test:top/name"]
    check(data, ctx, top("<name/>"), top("<name>the-top</name>"))
    # the augmented leaf of the same name carries the other namespace
    xpaths = check(data, ctx, top(f'<name xmlns="{AUG}"/>'), top(f'<name xmlns="{AUG}">aug-name</name>'))
    assert xpaths == ["/filter-test:top/filter-test-aug:name"]


def test_namespace_wildcard_child(data, ctx):
    xpaths = check(data, ctx, top('<name xmlns=""/>'),
                   top(f'<name>the-top</name><name xmlns="{AUG}">aug-name</name>'))
    assert sorted(xpaths) == ["/filter-test:top/filter-test-aug:name", "/filter-test:top/name"]


def test_namespace_wildcard_top_level(data, ctx):
    xpaths = subtree_to_xpaths(flt('<top xmlns=""><name/></top>'), ctx)
    assert sorted(xpaths) == ["/filter-test:top/filter-test-aug:name", "/filter-test:top/name"]
    xpaths = check(data, ctx, '<top xmlns=""><note/></top>', f'<top xmlns="{AUG}"><note>hello</note></top>')
    assert xpaths == ["/filter-test-aug:top/note"]
    xpaths = subtree_to_xpaths(flt('<top xmlns=""/>'), ctx)
    assert sorted(xpaths) == ["/filter-test-aug:top", "/filter-test:top"]
    _, got = run(data, ctx, '<top xmlns=""/>')
    assert {etree.QName(e).namespace for e in etree.fromstring(f"<r>{got}</r>")} == {FT, AUG}


def test_namespace_wildcard_content_match(data, ctx):
    # no namespace: the content match may be met by either module's leaf
    xpaths = check(data, ctx, '<top xmlns=""><name>aug-name</name><speed/></top>',
                   top(f'<speed>100</speed><name xmlns="{AUG}">aug-name</name>'))
    assert xpaths[0] == "/filter-test:top[name='aug-name' or filter-test-aug:name='aug-name']/speed"


def test_unknown_namespace_or_element_selects_nothing(data, ctx):
    assert subtree_to_xpaths(flt('<top xmlns="urn:nowhere"><name/></top>'), ctx) == []
    assert subtree_to_xpaths(flt(top("<no-such-node/>")), ctx) == []
    # ... but the valid siblings still select
    check(data, ctx, top("<no-such-node/><speed/>"), top("<speed>100</speed>"))
    # an augmented node asked for in the base module's namespace does not exist
    assert subtree_to_xpaths(flt(top("<item><extra/></item>")), ctx) == []


def test_unknown_content_match_is_never_true(data, ctx):
    assert subtree_to_xpaths(flt(top("<item><nope>1</nope><val/></item>")), ctx) == []


def test_element_under_a_leaf_selects_nothing(data, ctx):
    assert subtree_to_xpaths(flt(top("<name><deeper/></name>")), ctx) == []
    check(data, ctx, top("<name><deeper/></name><speed/>"), top("<speed>100</speed>"))


def test_content_match_on_non_leaf_selects_nothing(data, ctx):
    assert subtree_to_xpaths(flt(top("<users>fred</users>")), ctx) == []
    assert subtree_to_xpaths(flt(top("<item><sub>a1</sub><val/></item>")), ctx) == []


def test_attribute_match_never_matches(data, ctx):
    assert subtree_to_xpaths(flt(top('<item name="a"/>')), ctx) == []


# ----------------------------------------------------------------------------------
# node kinds


def test_list_key_predicates_in_schema_order(data, ctx):
    xpaths = check(data, ctx, top("<multi><k2>2</k2><k1>x</k1></multi>"),
                   top("<multi><k1>x</k1><k2>2</k2><data>x2</data></multi>"))
    assert xpaths == ["/filter-test:top/multi[k1='x'][k2='2']"]
    # partial key: every entry with k2 = 1
    check(data, ctx, top("<multi><k2>1</k2><data/></multi>"), top("""
        <multi><k1>x</k1><k2>1</k2><data>x1</data></multi>
        <multi><k1>y</k1><k2>1</k2><data>y1</data></multi>"""))
    # values compare canonically
    check(data, ctx, top("<multi><k1>y</k1><k2>01</k2></multi>"),
          top("<multi><k1>y</k1><k2>1</k2><data>y1</data></multi>"))
    # a value the type cannot hold matches nothing (and is no error)
    check(data, ctx, top("<multi><k1>y</k1><k2>many</k2></multi>"), None)


def test_list_entries_and_nested_selection(data, ctx):
    check(data, ctx, top("<item><name>a</name><sub><b/></sub><flags/></item>"),
          top("<item><name>a</name><flags>x</flags><flags>y</flags><sub><b>b1</b></sub></item>"))
    # a selection inside every entry: entries without it are left out
    check(data, ctx, top("<item><sub><a/></sub></item>"), top("""
        <item><name>a</name><sub><a>a1</a></sub></item>
        <item><name>b</name><sub><a>a2</a></sub></item>"""))


def test_leaf_list(data, ctx):
    check(data, ctx, top("<tags/>"), top("<tags>red</tags><tags>green</tags><tags>blue</tags>"))
    # a content match on a leaf-list selects that value
    xpaths = check(data, ctx, top("<tags>green</tags>"), top("<tags>green</tags>"))
    assert xpaths == ["/filter-test:top/tags[.='green']"]
    check(data, ctx, top("<tags>green</tags><tags>blue</tags><tags>none</tags>"),
          top("<tags>green</tags><tags>blue</tags>"))
    check(data, ctx, top("<item><name>a</name><flags>y</flags></item>"),
          top("<item><name>a</name><flags>y</flags></item>"))


def test_top_level_leaf_and_leaf_list(data, ctx):
    check(data, ctx, f'<top-leaf xmlns="{FT}"/>', f'<top-leaf xmlns="{FT}">tl</top-leaf>')
    check(data, ctx, f'<top-leaf xmlns="{FT}">tl</top-leaf>', f'<top-leaf xmlns="{FT}">tl</top-leaf>')
    check(data, ctx, f'<top-leaf xmlns="{FT}">other</top-leaf>', None)
    check(data, ctx, f'<top-ll xmlns="{FT}">l2</top-ll>', f'<top-ll xmlns="{FT}">l2</top-ll>')
    check(data, ctx, f'<top-ll xmlns="{FT}"/><top-leaf xmlns="{FT}"/>',
          f'<top-ll xmlns="{FT}">l1</top-ll><top-ll xmlns="{FT}">l2</top-ll><top-leaf xmlns="{FT}">tl</top-leaf>')


def test_choice_and_case_are_transparent(data, ctx):
    assert subtree_to_xpaths(flt(top("<speed/>")), ctx) == ["/filter-test:top/speed"]
    assert subtree_to_xpaths(flt(top("<slow-opts><delay/></slow-opts>")), ctx) == \
        ["/filter-test:top/slow-opts/delay"]
    assert subtree_to_xpaths(flt(top("<mode/>")), ctx) == []  # the choice itself is no data node
    check(data, ctx, top("<speed/><slow-opts/>"), top("<speed>100</speed>"))


def test_augment(data, ctx):
    xpaths = check(data, ctx, top(f'<item><name>a</name><extra xmlns="{AUG}"/></item>'),
                   top(f'<item><name>a</name><extra xmlns="{AUG}">e-a</extra></item>'))
    assert xpaths[0] == "/filter-test:top/item[name='a']/filter-test-aug:extra"
    # content match on an augmented leaf: a prefixed predicate
    xpaths = check(data, ctx, top(f'<item><extra xmlns="{AUG}">e-b</extra><val/></item>'),
                   top(f'<item><name>b</name><val>2</val><extra xmlns="{AUG}">e-b</extra></item>'))
    assert xpaths[0] == "/filter-test:top/item[filter-test-aug:extra='e-b']/val"
    check(data, ctx, top(f'<item><aug-box xmlns="{AUG}"><x/></aug-box></item>'),
          top(f'<item><name>a</name><aug-box xmlns="{AUG}"><x>xa</x></aug-box></item>'))


def test_state_nodes(data, ctx):
    check(data, ctx, top("<state><session><id>2</id></session></state>"),
          top("<state><session><id>2</id><peer>p2</peer></session></state>"))
    check(data, ctx, top("<state><counter/></state>"), top("<state><counter>42</counter></state>"))


def test_anydata_selected_whole(data, ctx):
    check(data, ctx, top("<blob/>"), top("<blob><anything>goes</anything></blob>"))
    assert subtree_to_xpaths(flt(top("<blob><anything/></blob>")), ctx) == []


def test_identityref_content_match_maps_prefixes(data, ctx):
    # the XML prefix of the value is whatever the filter declares
    xpaths = check(data, ctx, top(f'<item xmlns:k="{FT}"><kind>k:kind-b</kind><val/></item>'),
                   top("<item><name>b</name><val>2</val><kind>ft:kind-b</kind></item>"))
    assert xpaths[0] == "/filter-test:top/item[kind='filter-test:kind-b']/val"
    # no prefix: the default namespace
    check(data, ctx, top("<item><kind>kind-a</kind><val/></item>"),
          top("<item><name>a</name><val>1</val><kind>ft:kind-a</kind></item>"))
    # the same name in another namespace is another identity
    check(data, ctx, top(f'<item xmlns:k="{AUG}"><kind>k:kind-a</kind></item>'), None)


# ----------------------------------------------------------------------------------
# quoting


def test_quote():
    assert filters.quote("plain") == "'plain'"
    assert filters.quote("it's") == '"it\'s"'
    assert filters.quote("say \"it's\"") == "concat('say \"it', \"'\", 's\"')"
    assert filters.quote("'\"") == "concat('', \"'\", '\"')"


def test_values_with_quotes(data, ctx):
    xpaths = check(data, ctx, top("<item><name>it's</name><val/></item>"),
                   top("<item><name>it's</name><val>3</val></item>"))
    assert xpaths[0] == "/filter-test:top/item[name=\"it's\"]/val"
    check(data, ctx, top("<item><name>say \"it's\"</name></item>"),
          top("<item><name>say \"it's\"</name><val>4</val></item>"))
    check(data, ctx, top("<item><name>it'</name></item>"), None)


# ----------------------------------------------------------------------------------
# xpath filters


def xp(select_: str, ctx, **ns) -> str:
    nsmap = {"t": FT, "a": AUG, **ns}
    return " | ".join(xpaths_from_select(select_, nsmap, ctx))


def test_xpath_prefixes_become_module_names(data, ctx):
    assert xp("/t:top/t:item[t:name='a']/t:val", ctx) == \
        "/filter-test:top/filter-test:item[filter-test:name='a']/filter-test:val"
    assert xp("/t:top/t:item/a:extra", ctx) == "/filter-test:top/filter-test:item/filter-test-aug:extra"
    # the filter element's own prefixes, whatever they are
    assert xpaths_from_select("/x:top/y:note", {"x": FT, "y": AUG, None: NC}, ctx) == [
        "/filter-test:top/filter-test-aug:note"]
    out = select(data, [xp("/t:top/t:item[t:name='a']/t:val", ctx)], ctx)
    assert canon(printed(out)) == canon(top("<item><name>a</name><val>1</val></item>"))
    out.free()


def test_xpath_string_literals_untouched(ctx):
    assert xp("/t:top/t:item[t:name='t:top']", ctx) == \
        "/filter-test:top/filter-test:item[filter-test:name='t:top']"
    assert xp('/t:top/t:item[t:descr="a:b and t:c"]', ctx) == \
        '/filter-test:top/filter-test:item[filter-test:descr="a:b and t:c"]'
    # a prefix only inside a literal need not be known
    assert xp("/t:top/t:item[t:name='zz:unknown']", ctx).endswith("[filter-test:name='zz:unknown']")


def test_xpath_axes_functions_operators_kept(ctx):
    assert xp("/t:top/child::t:item[starts-with(t:name, 'a')]/descendant-or-self::node()", ctx) == \
        "/filter-test:top/child::filter-test:item[starts-with(filter-test:name, 'a')]" \
        "/descendant-or-self::node()"
    assert xp("//t:item[t:val > 1 and t:val mod 2 = 0] | /a:top/*", ctx) == \
        "//filter-test:item[filter-test:val > 1 and filter-test:val mod 2 = 0] | /filter-test-aug:top/*"
    # a union nested in parentheses stays one expression
    assert xp("(/t:top/t:name | /a:top)", ctx) == "(/filter-test:top/filter-test:name | /filter-test-aug:top)"
    assert xp("/t:top/t:item[t:val*2 = 4]", ctx) == "/filter-test:top/filter-test:item[filter-test:val*2 = 4]"
    assert xp("/t:top/t:item[count(t:flags) = 2]/t:name", ctx) == \
        "/filter-test:top/filter-test:item[count(filter-test:flags) = 2]/filter-test:name"
    assert xp("/t:top/t:item[derived-from-or-self(t:kind, 'filter-test:kind-base')]", ctx) == \
        "/filter-test:top/filter-test:item[derived-from-or-self(filter-test:kind, 'filter-test:kind-base')]"


def test_xpath_relative_paths_start_at_the_root(data, ctx):
    assert xp("t:top/t:users", ctx) == "/filter-test:top/filter-test:users"
    assert xp("t:top/t:name | a:top", ctx) == "/filter-test:top/filter-test:name | /filter-test-aug:top"
    assert xp("./t:top/t:name", ctx) == "/./filter-test:top/filter-test:name"
    out = select(data, [xp("t:top/t:item[t:name='b']/t:val", ctx)], ctx)
    assert canon(printed(out)) == canon(top("<item><name>b</name><val>2</val></item>"))
    out.free()


def test_xpath_unknown_prefix(ctx):
    with pytest.raises(FilterError) as exc:
        xp("/t:top/zz:item", ctx)
    assert exc.value.tag == "invalid-value"
    assert "zz" in str(exc.value)
    with pytest.raises(FilterError) as exc:
        xpaths_from_select("/n:top", {"n": "urn:nowhere"}, ctx)
    assert exc.value.tag == "invalid-value"


def test_xpath_and_or_predicates_on_absent_data_select_nothing(ctx):
    tree = ctx.parse_data_mem(f'<top xmlns="{AUG}"><note>n</note></top>', "xml", strict=True, parse_only=True)
    for expr in ("//t:item[t:val > 1 and t:val < 5]", "/t:top/t:item[t:val = 1 or t:val = 2]/t:name"):
        assert select(tree, xpaths_from_select(expr, {"t": FT, "a": AUG}, ctx), ctx) is None, expr
    out = select(tree, xpaths_from_select("//t:item[t:val > 1 and t:val < 5] | /a:top", {"t": FT, "a": AUG}, ctx), ctx)
    assert canon(printed(out)) == canon(f'<top xmlns="{AUG}"><note>n</note></top>')
    out.free()
    tree.free()


def test_xpath_invalid_expressions(ctx):
    for bad in ("/t:top/t:item[", "/t:top/", "count(/t:top/t:item)", "/t:top/t:name = 'x'",
                "/t:top/t:item[t:val > 1] and /t:top", "'x'", "1 + 1", "$v", "string(/t:top/t:name)", "/t:top/#",
                "/t:top/t:item[no-such-function(1)]"):
        with pytest.raises(FilterError) as exc:
            xp(bad, ctx)
        assert exc.value.tag == "invalid-value", bad


def test_xpath_select_state_and_augments(data, ctx):
    out = select(data, xpaths_from_select("/t:top/t:state/t:session[t:peer='p1'] | //a:note",
                                          {"t": FT, "a": AUG}, ctx), ctx)
    assert canon(printed(out)) == canon(
        top("<state><session><id>1</id><peer>p1</peer></session></state>")
        + f'<top xmlns="{AUG}"><note>hello</note></top>')
    out.free()


# ----------------------------------------------------------------------------------
# select


def test_select_merges_duplicates_and_nested(data, ctx):
    before = printed(data)
    out = select(data, [
        "/filter-test:top/item[name='a']/val",
        "/filter-test:top/item[name='a']",  # contains the one above
        "/filter-test:top/item[name='a']/sub/a",  # inside the one above
        "/filter-test:top/item[name='b']/val",
        "/filter-test:top/item[name='b']/val",  # twice
        "/filter-test:top/item/name",  # keys only
    ], ctx)
    got = printed(out)
    out.free()
    a = etree.fromstring(f"<r>{DATA}</r>", etree.XMLParser(remove_blank_text=True))
    item_a = etree.tostring(a.find(f"{{{FT}}}top/{{{FT}}}item")).decode()
    assert canon(got) == canon(top(item_a + """<item><name>b</name><val>2</val></item>
        <item><name>it's</name></item><item><name>say "it's"</name></item><item><name>c</name></item>"""))
    assert printed(data) == before  # the input is left alone


def test_select_keys_of_ancestors_and_top_level(data, ctx):
    out = select(data, ["/filter-test:top/multi[k1='x'][k2='2']/data", "/filter-test:top-leaf",
                        "/filter-test-aug:top/note"], ctx)
    assert canon(printed(out)) == canon(
        top("<multi><k1>x</k1><k2>2</k2><data>x2</data></multi>")
        + f'<top-leaf xmlns="{FT}">tl</top-leaf><top xmlns="{AUG}"><note>hello</note></top>')
    out.free()


def test_select_nothing(data, ctx):
    assert select(data, ["/filter-test:top/item[name='zz']", "/filter-test:top/slow-opts"], ctx) is None


def test_select_keeps_user_order(data, ctx):
    def ids(tree, tag):
        root = etree.fromstring(f"<r>{printed(tree)}</r>")
        return [e.text for e in root.iter(f"{{{FT}}}{tag}")]

    # one xpath per entry, in the reverse of the data's order
    out = select(data, ["/filter-test:top/seq[id='s3']/v", "/filter-test:top/seq[id='s1']",
                        "/filter-test:top/order-ll[.='o3']", "/filter-test:top/order-ll[.='o1']"], ctx)
    assert ids(out, "id") == ["s1", "s3"]
    assert ids(out, "v") == ["1", "3"]
    assert ids(out, "order-ll") == ["o1", "o3"]
    out.free()
    xpaths = subtree_to_xpaths(flt(top("<seq><id>s2</id></seq><seq><id>s1</id></seq>")), ctx)
    out = select(data, xpaths, ctx)
    assert ids(out, "id") == ["s1", "s2"]
    out.free()


def test_select_keeps_default_flags(ctx):
    # implicit default nodes stay flagged as defaults in the copy (with-defaults printing)
    tree = ctx.parse_data_mem(top("<item><name>a</name></item><item><name>b</name><mtu>9000</mtu></item>"),
                              "xml", strict=True, no_state=True)
    assert tree.find_path("/filter-test:top/item[name='a']/mtu") is not None
    out = select(tree, ["/filter-test:top/item"], ctx)
    assert canon(printed(out)) == canon(top("<item><name>a</name></item><item><name>b</name><mtu>9000</mtu></item>"))
    full = out.print_mem("xml", with_siblings=True, include_implicit_defaults=True)
    assert canon(full) == canon(top("<item><name>a</name><mtu>1500</mtu></item>"
                                    "<item><name>b</name><mtu>9000</mtu></item>"))
    out.free()
    tree.free()


def test_top_level_modules():
    assert filters.top_level_modules(["/filter-test:top/item[name='a']", "/filter-test-aug:top"]) == \
        {"filter-test", "filter-test-aug"}
    assert filters.top_level_modules(["//filter-test:item"]) is None
    assert filters.top_level_modules(["/filter-test:a | /x:b"]) is None


def test_large_list_one_entry(ctx):
    n = 10_000
    items = "".join(f"<item><name>n{i}</name><val>{i}</val><descr>d{i}</descr><sub><a>{i}</a></sub></item>"
                    for i in range(n))
    tree = ctx.parse_data_mem(top(items), "xml", strict=True, parse_only=True)
    try:
        started = time.perf_counter()
        xpaths = subtree_to_xpaths(flt(top("<item><name>n9876</name><val/><sub/></item>")), ctx)
        out = select(tree, xpaths, ctx)
        elapsed = time.perf_counter() - started
        assert all("item[name='n9876']" in x for x in xpaths)
        assert canon(printed(out)) == canon(
            top("<item><name>n9876</name><val>9876</val><sub><a>9876</a></sub></item>"))
        out.free()
        out = select(tree, [xp("/t:top/t:item[t:name='n42']/t:descr", ctx)], ctx)
        assert canon(printed(out)) == canon(top("<item><name>n42</name><descr>d42</descr></item>"))
        out.free()
        print(f"one entry of {n}: {elapsed * 1000:.2f} ms")
    finally:
        tree.free()


def test_xpath_unprefixed_first_step_names_its_module(data, ctx):
    # "top" exists in both test modules: ambiguous without a prefix
    with pytest.raises(FilterError) as exc:
        xp("/top/name", ctx)
    assert "several modules (filter-test, filter-test-aug)" in str(exc.value)
    with pytest.raises(FilterError) as exc:
        xp("/nowhere", ctx)
    assert 'no module with a top-level node "nowhere"' in str(exc.value)
    assert xp("/top-leaf | top-ll", ctx) == "/filter-test:top-leaf | /filter-test:top-ll"
    # unprefixed later steps inherit the module of the step before, as in libyang
    assert xp("/t:top/item[name='a']/val", ctx) == "/filter-test:top/item[name='a']/val"
    out = select(data, [xp("/t:top/item[name='a']/val", ctx)], ctx)
    assert canon(printed(out)) == canon(top("<item><name>a</name><val>1</val></item>"))
    out.free()


# ----------------------------------------------------------------------------------
# limits on what a filter may cost


def refused(select_: str, ctx) -> FilterError:
    with pytest.raises(FilterError) as exc:
        xp(select_, ctx, re="http://exslt.org/regular-expressions", str="http://exslt.org/strings")
    return exc.value


@pytest.mark.parametrize("select_,name", [
    ("/t:top/t:item[re-match(t:name, '(a+)+b')]", "re-match"),
    ("/t:top/t:item[re:test(t:name, '(a+)+b')]", "re:test"),
    ("/t:top/t:item[str:padding(100000000) = t:name]", "str:padding"),
    ("/t:top/t:item[deref(t:name)]", "deref"),
    ("/t:top/t:item[t:name = current()]", "current"),
])
def test_xpath_regex_and_extension_functions_refused(ctx, select_, name):
    exc = refused(select_, ctx)
    assert (exc.tag, exc.app_tag) == ("invalid-value", "xpath-construct-not-allowed")
    assert f'the function "{name}" is not allowed' in str(exc)


@pytest.mark.parametrize("select_,what", [
    ("//t:item[../t:item/t:val = t:val]", '".."'),
    ("//t:item[t:val = /t:top/t:item/t:val]", '"/"'),
    ("//t:item[.//t:a]", '"//"'),
    ("//t:item[following-sibling::t:item]", 'the axis "following-sibling"'),
    ("//t:item[ancestor::t:top]", 'the axis "ancestor"'),
    ("//t:item/preceding::t:item", 'the axis "preceding"'),
])
def test_xpath_predicates_look_only_down(ctx, select_, what):
    exc = refused(select_, ctx)
    assert (exc.tag, exc.app_tag) == ("invalid-value", "xpath-construct-not-allowed")
    assert what in str(exc)


def test_xpath_allowed_constructs_still_select(data, ctx):
    expr = "/t:top/t:item[t:sub[t:a = 'a1'] and count(t:flags) = 2 and not(t:val > 1)]/t:name | //t:seq/.."
    out = select(data, xpaths_from_select(expr, {"t": FT}, ctx), ctx)
    assert out is not None and "<name>a</name>" in printed(out)
    out.free()


@pytest.mark.parametrize("select_,message", [
    ("/t:top/t:item[t:name = '" + "x" * 4096 + "']", "longer than 4096 characters"),
    ("/t:top/t:item" + "[t:sub" * 9 + "]" * 9, "more than 8 levels"),
    (" | ".join(["//t:name"] * 9), "more than 8 descendant steps"),
])
def test_xpath_caps(ctx, select_, message):
    exc = refused(select_, ctx)
    assert (exc.tag, exc.app_tag) == ("too-big", "filter-too-large")
    assert message in str(exc)


def test_subtree_filter_element_cap(data, ctx):
    names = "".join(f"<item><name>n{i}</name></item>" for i in range(filters.MAX_FILTER_ELEMENTS // 2))
    with pytest.raises(FilterError) as exc:
        subtree_to_xpaths(flt(top(names)), ctx)  # two elements a name, and <top>
    assert (exc.value.tag, exc.value.app_tag) == ("too-big", "filter-too-large")
    assert "more than 10000 elements" in str(exc.value)
    names = "".join(f"<item><name>n{i}</name></item>" for i in range(filters.MAX_FILTER_ELEMENTS // 2 - 1))
    assert len(subtree_to_xpaths(flt(top(names)), ctx)) == filters.MAX_FILTER_ELEMENTS // 2 - 1


@pytest.mark.parametrize("kind, filter_, where", [
    ("subtree", top("<name/>"), "loop"),
    ("subtree", top("".join(f"<item><name>n{i}</name></item>" for i in range(9))), "worker"),
    ("xpath", "/t:top/t:name", "worker"),
])
def test_filtered_replies_are_selected_off_the_event_loop_unless_cheap(data, ctx, monkeypatch, kind, filter_, where):
    """XPath filters and large subtree filters run on the worker, on their own copy of the
    tree (a commit may free the original meanwhile); a few subtree paths run on the loop."""
    from types import SimpleNamespace

    from nc_server import netconf

    threads = []

    def select_(tree, xpaths, ctx_):
        threads.append((threading.current_thread().name, tree.cdata == data.cdata))
        return select(tree, xpaths, ctx_)

    monkeypatch.setattr(filters, "select", select_)
    session = SimpleNamespace(server=SimpleNamespace(ctx=ctx, acm=SimpleNamespace(checked=lambda s: None)))
    el = (flt(filter_) if kind == "subtree"
          else etree.fromstring(f'<filter xmlns="{NC}" xmlns:t="{FT}" type="xpath" select="{filter_}"/>'))
    selection = netconf._filter(session, {"filter": el})
    assert selection.linear is (kind == "subtree")
    reply = asyncio.run(netconf._data_reply(session, data, selection, "explicit", owned=False))
    loop_thread = threading.current_thread().name
    assert threads == ([(loop_thread, True)] if where == "loop" else [("filter_0", False)])
    if where == "loop" or kind == "xpath":
        assert canon(reply[reply.index(">") + 1:-len("</data>")]) == canon(top("<name>the-top</name>"))
    assert data.find_path("/filter-test:top/name") is not None  # the original is untouched
