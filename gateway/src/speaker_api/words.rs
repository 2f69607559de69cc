//! An amount of đồng as a Vietnamese speaker says it: 150000 → "một trăm năm
//! mươi nghìn đồng". The simulator prints this when it "plays" an
//! announcement, so a test (or a person at a demo) hears what the shop would.

const DIGITS: [&str; 10] = [
    "không", "một", "hai", "ba", "bốn", "năm", "sáu", "bảy", "tám", "chín",
];
/// Scale words for groups of three digits, lowest first; past tỷ they
/// compound (nghìn tỷ, triệu tỷ). Seven groups cover every u64.
const SCALES: [&str; 7] = ["", "nghìn", "triệu", "tỷ", "nghìn tỷ", "triệu tỷ", "tỷ tỷ"];

/// Reads a group of three digits. `full` asks for the hundreds even when
/// they are zero ("không trăm"), as inside a larger number.
fn group(n: u64, full: bool, out: &mut Vec<&'static str>) {
    let (h, t, u) = (
        (n / 100) as usize,
        (n / 10 % 10) as usize,
        (n % 10) as usize,
    );
    if h > 0 || full {
        out.extend([DIGITS[h], "trăm"]);
    }
    match t {
        0 if u > 0 && (h > 0 || full) => out.push("linh"),
        0 => {}
        1 => out.push("mười"),
        _ => out.extend([DIGITS[t], "mươi"]),
    }
    match u {
        0 => {}
        1 if t >= 2 => out.push("mốt"),
        4 if t >= 2 => out.push("tư"),
        5 if t >= 1 => out.push("lăm"),
        _ => out.push(DIGITS[u]),
    }
}

/// The words for `n` alone ("một trăm năm mươi nghìn").
pub fn number_words(n: u64) -> String {
    if n == 0 {
        return DIGITS[0].to_string();
    }
    // Split into groups of three, lowest first.
    let mut groups = Vec::new();
    let mut rest = n;
    while rest > 0 {
        groups.push(rest % 1000);
        rest /= 1000;
    }
    let mut out: Vec<&'static str> = Vec::new();
    let top = groups.len() - 1;
    for (i, &g) in groups.iter().enumerate().rev() {
        // A zero group is silent: 1 000 500 is "một triệu năm trăm".
        if g == 0 {
            continue;
        }
        group(g, i != top, &mut out);
        if i > 0 {
            out.push(SCALES[i]);
        }
    }
    out.join(" ")
}

/// What the speaker says for a payment of `amount` đồng.
pub fn amount_words(amount: u64) -> String {
    format!("{} đồng", number_words(amount))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_amounts_as_a_speaker_would() {
        let cases: &[(u64, &str)] = &[
            (0, "không"),
            (1, "một"),
            (5, "năm"),
            (10, "mười"),
            (11, "mười một"),
            (14, "mười bốn"),
            (15, "mười lăm"),
            (20, "hai mươi"),
            (21, "hai mươi mốt"),
            (24, "hai mươi tư"),
            (25, "hai mươi lăm"),
            (100, "một trăm"),
            (101, "một trăm linh một"),
            (105, "một trăm linh năm"),
            (110, "một trăm mười"),
            (115, "một trăm mười lăm"),
            (1_000, "một nghìn"),
            (1_005, "một nghìn không trăm linh năm"),
            (1_050, "một nghìn không trăm năm mươi"),
            (10_000, "mười nghìn"),
            (15_000, "mười lăm nghìn"),
            (21_000, "hai mươi mốt nghìn"),
            (150_000, "một trăm năm mươi nghìn"),
            (2_277_000, "hai triệu hai trăm bảy mươi bảy nghìn"),
            (1_000_500, "một triệu năm trăm"),
            (1_000_050, "một triệu không trăm năm mươi"),
            (1_000_000, "một triệu"),
            (1_000_000_000, "một tỷ"),
            (2_500_000_000, "hai tỷ năm trăm triệu"),
            (1_000_000_000_000, "một nghìn tỷ"),
            (5_000_000_000_000, "năm nghìn tỷ"),
            (
                u64::MAX,
                "mười tám tỷ tỷ bốn trăm bốn mươi sáu triệu tỷ bảy trăm bốn mươi tư nghìn tỷ \
                 không trăm bảy mươi ba tỷ bảy trăm linh chín triệu năm trăm năm mươi mốt nghìn \
                 sáu trăm mười lăm",
            ),
        ];
        for (n, words) in cases {
            assert_eq!(number_words(*n), *words, "{n}");
        }
    }

    #[test]
    fn appends_the_currency() {
        assert_eq!(amount_words(150_000), "một trăm năm mươi nghìn đồng");
    }
}
