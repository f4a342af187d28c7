//! Hostile chat templates (issue 20): every operation that can build a large
//! value in one step, every way of growing one step by step, and every way
//! of nesting values deeply ends in a clear error, fast and in bounded
//! memory — never an abort, a stack overflow or a hang.

use std::time::{Duration, Instant};

use tokenizer::chat::{ChatContext, ChatTemplate, Message};
use tokenizer::TokenizerError;

fn ctx() -> ChatContext {
    ChatContext {
        messages: vec![Message::new("user", "hi")],
        add_generation_prompt: true,
        ..ChatContext::default()
    }
}

/// Renders `src`, which must fail within a few seconds; returns the error.
fn fails(src: &str) -> TokenizerError {
    let start = Instant::now();
    let result = ChatTemplate::new(src).and_then(|t| t.render(&ctx()));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{src}: took {:?}",
        start.elapsed()
    );
    match result {
        Ok(out) => panic!("{src}: rendered {} bytes", out.len()),
        Err(e) => e,
    }
}

#[test]
fn one_operation_cannot_build_a_huge_value() {
    for src in [
        "{{ '%99999999999s'|format('x') }}",
        "{{ '%.99999999999f'|format(1.0) }}",
        "{{ '%*s'|format(99999999999, 'x') }}",
        "{{ '{:>99999999999}'.format('x') }}",
        "{{ '{:{}}'.format('x', 99999999999) }}",
        "{{ ('x' * 1000)|indent(100000000) }}",
        "{{ ('x' * 1000)|indent(width=100000000) }}",
        "{{ range(100000)|join('x' * 100000) }}",
        "{{ ('x' * 100000).join(range(100000)|map('string')) }}",
        "{{ ('x' * 10000000)|replace('', 'y' * 1000) }}",
        "{{ ('x' * 10000000).replace('', 'y' * 1000) }}",
        "{{ 'y' * 1000 * 1000 * 1000 }}",
        "{% set n = 1000000000 %}{{ 'x' * n }}",
        "{{ [1]|batch(1000000000, 'x')|list|length }}",
        "{{ [1]|slice(100000000)|list|length }}",
        "{% set n = 100000000000000 %}{{ ([1] * n)|list|length }}",
        "{{ ('x' * 10000000)|list|length }}",
        "{{ ('x' * 10000000)|split('')|length }}",
        "{{ ('x' * 10000000).split('')|length }}",
        "{% set s = 'x' * 1000000 %}{{ ([s] * 100000)|string }}",
        "{% set s = 'x' * 1000000 %}{% set l = [s] * 100000 %}{{ l|length }}",
        "{{ {'a': 1}|tojson(indent='x' * 100000) }}",
    ] {
        let e = fails(src);
        assert!(
            matches!(
                e,
                TokenizerError::TemplateLimit(_) | TokenizerError::TemplateRender(_)
            ),
            "{src}: {e}"
        );
    }
}

#[test]
fn values_cannot_grow_step_by_step_past_the_limits() {
    for src in [
        // Doubling a string: 30 steps would make 2^30 times the start.
        "{% set ns = namespace(s='x' * 1000) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        "{% set ns = namespace(s='x' * 1000) %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
        "{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}",
        "{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l * 2 %}{% endfor %}{{ ns.l|length }}",
        // A capture that doubles itself.
        "{% set ns = namespace(s='x' * 1000) %}{% for i in range(40) %}{% set ns.s %}{{ ns.s }}{{ ns.s }}{% endset %}{% endfor %}{{ ns.s|length }}",
        // A macro's output doubling through recursion.
        "{% macro m(n) %}{% if n > 0 %}{{ m(n - 1) }}{{ m(n - 1) }}{% else %}{{ 'x' * 1000000 }}{% endif %}{% endmacro %}{{ m(40)|length }}",
        // Many small additions.
        "{% set ns = namespace(s='') %}{% for i in range(100000) %}{% for j in range(100) %}{% set ns.s = ns.s ~ 'xxxxxxxxxx' %}{% endfor %}{% endfor %}",
    ] {
        let e = fails(src);
        assert!(
            matches!(
                e,
                TokenizerError::TemplateLimit(_)
                    | TokenizerError::TemplateOutputTooLarge(_)
                    | TokenizerError::TemplateOutOfFuel(_)
            ),
            "{src}: {e}"
        );
    }
}

#[test]
fn output_and_captures_are_capped() {
    for src in [
        "{% set s = 'x' * 1000000 %}{% for i in range(100000) %}{{ s }}{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(1000) %}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}{% endfor %}",
    ] {
        let e = fails(src);
        assert!(
            matches!(
                e,
                TokenizerError::TemplateOutputTooLarge(_) | TokenizerError::TemplateLimit(_)
            ),
            "{src}: {e}"
        );
    }
}

#[test]
fn captured_output_counts_against_the_cap() {
    let src = format!(
        "{{% set s %}}{{% for i in range(100000) %}}{}{{% endfor %}}{{% endset %}}",
        "x".repeat(1000)
    );
    let e = fails(&src);
    assert!(
        matches!(e, TokenizerError::TemplateOutputTooLarge(_)),
        "{e}"
    );
}

#[test]
fn nesting_is_bounded_so_nothing_overflows_the_stack() {
    for src in [
        "{% set ns = namespace(x=none) %}{% for i in range(100000) %}{% for j in range(30) %}{% set ns.x = [ns.x] %}{% endfor %}{% endfor %}ok",
        "{% set ns = namespace(x=none) %}{% for i in range(100000) %}{% set ns.x = {'a': ns.x} %}{% endfor %}{{ ns.x|string }}",
        "{% set ns = namespace(x=none) %}{% for i in range(100000) %}{% set ns.x = [ns.x]|batch(1) %}{% endfor %}ok",
        "{% set ns = namespace(x=none) %}{% for i in range(100000) %}{% set ns.x = dict(a=ns.x) %}{% endfor %}ok",
        "{% set ns = namespace(x=none) %}{% for i in range(100000) %}{% set ns.x = namespace(a=ns.x) %}{% endfor %}ok",
    ] {
        let e = fails(src);
        assert!(matches!(e, TokenizerError::TemplateLimit(_)), "{src}: {e}");
        assert!(e.to_string().contains("nested deeper than 64"), "{src}: {e}");
    }
}

#[test]
fn constant_folding_while_compiling_is_bounded() {
    // minijinja folds constant expressions while compiling, before any
    // guard runs: each of these would build gigabytes there.
    for src in [
        "{{ 'x' * 99999999 ~ 'x' * 99999999 ~ 'x' * 99999999 ~ 'x' * 99999999 }}",
        "{{ ([1] * 1000000000000) ~ 'x' }}",
        "{% set s = 'x' * 100000000 %}",
    ] {
        let e = fails(src);
        assert!(
            matches!(e, TokenizerError::TemplateLimit(ref m) if m.contains("constant expression")),
            "{src}: {e}"
        );
    }
    // Long expressions would make parsing and folding deep and quadratic.
    let long = format!("{{{{ x{} }}}}", "~'a'".repeat(100_000));
    let e = fails(&long);
    assert!(e.to_string().contains("has more than 1024 tokens"), "{e}");
    let huge = "x".repeat(2 << 20);
    assert!(fails(&huge).to_string().contains("the limit is 1048576"));
}

#[test]
fn runaway_loops_run_out_of_fuel() {
    let e =
        fails("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
    assert!(matches!(e, TokenizerError::TemplateOutOfFuel(_)), "{e}");
}

#[test]
fn the_sandbox_names_cannot_be_shadowed() {
    let mut c = ctx();
    c.extra.insert("~concat".into(), minijinja::Value::from(1));
    let e = ChatTemplate::chatml().render(&c).unwrap_err();
    assert!(e.to_string().contains("reserved"), "{e}");
}

#[test]
fn ordinary_templates_still_render() {
    let t = ChatTemplate::new(
        "{% for m in messages %}{{ m.role|upper }}:{{ m['content'] ~ '!' }}{% endfor %}\
         {% set ns = namespace(n=0) %}{% for x in range(5) %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}\
         {{ 'a %s %5.1f'|format('b', 2.25) }}|{{ '{}-{:>3}'.format(1, 'z') }}|{{ [1, 2] * 2 }}|{{ 'ab' * 2 }}\
         {{ [1, 2, 3]|batch(2)|list }}{{ 'x\ny'|indent(2) }}{{ ['a', 'b']|join(',') }}{{ 2 ** 10 }}",
    )
    .unwrap();
    assert_eq!(
        t.render(&ctx()).unwrap(),
        "USER:hi!10a b   2.2|1-  z|[1, 2, 1, 2]|abab[[1, 2], [3]]x\n  ya,b1024"
    );
}

#[test]
fn constant_lists_cannot_be_repeated_lazily_past_the_list_limit() {
    // Folded while compiling into a lazy sequence of a billion elements,
    // which printing, sorting or serializing then walked or collected
    // (an abort after gigabytes, or a hang).
    for src in [
        "{{ [1] * 999999999 }}",
        "{{ ([1] * 1000000) * 1000 }}",
        "{{ ([1] * 1000000000)|sort|first }}",
        "{{ ([1] * 1000000000)|tojson }}",
        "{{ ([1] * 1000000000)|max }}",
    ] {
        let e = fails(src);
        assert!(
            matches!(e, TokenizerError::TemplateLimit(ref m) if m.contains("builds a list of")),
            "{src}: {e}"
        );
    }
    let t = ChatTemplate::new("{{ ([1, 2] * 3)|length }}").unwrap();
    assert_eq!(t.render(&ctx()).unwrap(), "6");
}

#[test]
fn linear_operations_repeated_in_a_loop_run_out_of_work() {
    // Each is one instruction reading a list of 100000 elements or a string
    // of 1.6 MB, repeated 100000 times: many minutes of work before, each
    // now charged the size of what it reads.
    let list = "{% set one = [1] %}{% set l = one * 100000 %}{% set m = one * 100000 %}";
    let string = "{% set s = 'x' * 1600000 %}";
    for (setup, op) in [
        (list, "l|max"),
        (list, "2 in l"),
        (list, "l == m"),
        (list, "l < m"),
        (list, "l.count(2)"),
        (list, "l is sameas m"),
        (string, "s.find('y')"),
        (string, "'y' in s"),
        (string, "s|length + s|wordcount"),
    ] {
        let src =
            format!("{setup}{{% for i in range(100000) %}}{{% set x = {op} %}}{{% endfor %}}done");
        let e = fails(&src);
        assert!(
            e.to_string().contains("work exceeds") || e.to_string().contains("unknown filter"),
            "{op}: {e}"
        );
    }
}

#[test]
fn python_count_of_an_empty_string_returns() {
    // minijinja-contrib's str.count looped forever on an empty needle.
    let t = ChatTemplate::new("{{ 'abc'.count('') }} {{ ('x' * 1000000).count('') }}").unwrap();
    assert_eq!(t.render(&ctx()).unwrap(), "4 1000001");
}

#[test]
fn divisibleby_zero_is_an_error_not_a_panic() {
    // Found by the fuzz target: minijinja computes `4 % 0`, which panics.
    for src in ["{{ 4 is divisibleby(0) }}", "{{ 4 is not divisibleby 0 }}"] {
        let e = fails(src);
        assert!(e.to_string().contains("division by zero"), "{src}: {e}");
    }
}

#[test]
fn filters_and_tests_with_argument_splats_are_refused() {
    for src in ["{{ [3, 1]|sort(*[]) }}", "{{ 1 is divisibleby(*[1]) }}"] {
        let e = fails(src);
        assert!(
            matches!(e, TokenizerError::TemplateLimit(ref m) if m.contains("is called with *args")),
            "{src}: {e}"
        );
    }
    // Ordinary filter and test calls, keyword arguments included, still work.
    let t = ChatTemplate::new(
        "{{ [3, 1, 2]|sort(reverse=true)|join(',') }} {{ 4 is divisibleby(2) }} {{ 'a' in 'cat' }} {{ [1] == [1] }}",
    )
    .unwrap();
    assert_eq!(t.render(&ctx()).unwrap(), "3,2,1 True True True");
}
