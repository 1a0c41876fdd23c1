//! Markdown to HTML that is safe to put into a page: raw HTML in the source becomes
//! text, and a link or image may point only to `http(s)`, `mailto`, an anchor or a
//! relative path (never `javascript:`, `data:` or another scheme). A report carries
//! what models wrote, so this is what the UI shows.

use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, html};

/// Render `markdown` as an HTML fragment.
#[must_use]
pub fn markdown_to_html(markdown: &str) -> String {
    let parser = Parser::new_ext(
        markdown,
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH,
    )
    .map(|event| match event {
        Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: safe_destination(dest_url),
            title,
            id,
        }),
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Image {
            link_type,
            dest_url: safe_destination(dest_url),
            title,
            id,
        }),
        event => event,
    });
    let mut out = String::with_capacity(markdown.len() * 3 / 2);
    html::push_html(&mut out, parser);
    out
}

/// `dest` when its scheme is allowed, else `#`.
fn safe_destination(dest: CowStr<'_>) -> CowStr<'_> {
    let lower = dest.trim().to_ascii_lowercase();
    // A scheme is what comes before the first ':' when no '/', '?' or '#' comes first.
    let scheme = lower
        .find([':', '/', '?', '#'])
        .filter(|&i| lower.as_bytes()[i] == b':')
        .map(|i| &lower[..i]);
    let control = lower.chars().any(char::is_control);
    // `//host/x` and `\\host` are other sites, however relative they look.
    let off_site = lower.starts_with("//") || lower.contains('\\');
    match scheme {
        _ if control || off_site => CowStr::Borrowed("#"),
        None | Some("http" | "https" | "mailto") => dest,
        Some(_) => CowStr::Borrowed("#"),
    }
}

#[cfg(test)]
mod tests {
    use super::markdown_to_html;

    #[test]
    fn raw_html_is_text_and_only_safe_links_survive() {
        let hostile = "# Title\n\n<script>alert(1)</script>\n\nInline <img src=x onerror=alert(2)> here.\n\n\
            [a](javascript:alert(3)) [b](JAVASCRIPT:alert(4)) [c]( jav\tascript:alert(5)) \
            [d](data:text/html;base64,PHNjcmlwdD4=) [e](vbscript:x) ![f](javascript:alert(6)) \
            [g](java&#x73;cript:alert(7)) [h](&#106;avascript:alert(8)) [i](//evil.example/x) [j](/\\evil.example)\n\n\
            [ok](https://example.com/x?y=1) [rel](notes/a.md) [anchor](#top) [mail](mailto:a@b.c)\n\n\
            | a | b |\n|---|---|\n| <b>1</b> | 2 |\n";
        let html = markdown_to_html(hostile);
        let forbidden = [
            "<script",
            "<img src=x",
            "<b>1",
            "href=\"javascript",
            "href=\"JAVASCRIPT",
            "href=\"data:",
            "href=\"vbscript",
            "src=\"javascript",
        ];
        for forbidden in forbidden {
            assert!(!html.contains(forbidden), "{forbidden} in {html}");
        }
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        // Every link left points somewhere allowed.
        for href in html
            .split("href=\"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap_or_default())
        {
            let allowed = href == "#"
                || href.starts_with("https://")
                || href.starts_with("mailto:")
                || href.starts_with('#')
                || !href.contains(':');
            assert!(allowed, "{href} in {html}");
        }
        assert!(html.contains("<h1>Title</h1>"), "{html}");
        assert!(!html.contains("evil.example"), "{html}");
        for kept in [
            "href=\"https://example.com/x?y=1\"",
            "href=\"notes/a.md\"",
            "href=\"#top\"",
            "href=\"mailto:a@b.c\"",
            "<table>",
        ] {
            assert!(html.contains(kept), "{kept} missing from {html}");
        }
    }
}
