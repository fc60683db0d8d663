//! Refuse pickles that would run code. A PyTorch checkpoint's pickle only needs a handful of
//! globals (tensor rebuild functions, storage types, `OrderedDict`); anything else (`os.system`,
//! `builtins.eval`, ...) is a file trying to execute code when unpickled by Python. Nothing is
//! ever executed here (burn-store's reader is pure Rust): this scan turns such a file into a clear
//! refusal instead of a confusing parse error, before any tensor is read.

/// Globals a tensor checkpoint may reference.
fn allowed(module: &str, name: &str) -> bool {
    match module {
        "collections" => name == "OrderedDict",
        "torch._utils" => matches!(
            name,
            "_rebuild_tensor"
                | "_rebuild_tensor_v2"
                | "_rebuild_parameter"
                | "_rebuild_parameter_with_state"
        ),
        "torch" => {
            name.ends_with("Storage")
                || matches!(name, "Size" | "device" | "float32" | "float16" | "bfloat16")
        }
        "torch.storage" => name == "UntypedStorage" || name == "TypedStorage",
        _ => false,
    }
}

/// Walks the opcodes of one pickle stream starting at `pos`; returns the position after STOP.
/// Errors name the first global that is not allowed, or say why the stream is unreadable.
pub fn scan(bytes: &[u8], mut pos: usize) -> Result<usize, String> {
    // Values pushed recently: `Some(text)` for strings (needed to resolve STACK_GLOBAL).
    let mut stack: Vec<Option<String>> = Vec::new();
    let mut memo: std::collections::HashMap<u64, Option<String>> = Default::default();
    let take = |pos: &mut usize, n: usize| -> Result<&[u8], String> {
        let end = pos
            .checked_add(n)
            .filter(|&e| e <= bytes.len())
            .ok_or("truncated pickle")?;
        let s = &bytes[*pos..end];
        *pos = end;
        Ok(s)
    };
    let line = |pos: &mut usize| -> Result<String, String> {
        let rest = &bytes[*pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated pickle (no newline)")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        *pos += n + 1;
        Ok(s)
    };
    let uint = |b: &[u8]| b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64);
    loop {
        let op = *take(&mut pos, 1)?.first().ok_or("truncated pickle")?;
        match op {
            b'.' => return Ok(pos),
            // GLOBAL / INST: "module\nname\n"
            b'c' | b'i' => {
                let (module, name) = (line(&mut pos)?, line(&mut pos)?);
                if !allowed(&module, &name) {
                    return Err(format!("it references `{module}.{name}`"));
                }
                stack.push(None);
            }
            0x93 => {
                // STACK_GLOBAL: module and name are the two topmost strings.
                let name = stack.pop().flatten();
                let module = stack.pop().flatten();
                match (module, name) {
                    (Some(m), Some(n)) if allowed(&m, &n) => stack.push(None),
                    (Some(m), Some(n)) => return Err(format!("it references `{m}.{n}`")),
                    _ => return Err("it builds a global from values that cannot be checked".into()),
                }
            }
            0x82..=0x84 => return Err("it uses the copyreg extension registry".into()),
            // strings: push their value
            b'X' | b'T' | b'B' => {
                let n = uint(take(&mut pos, 4)?) as usize;
                let s = take(&mut pos, n)?;
                stack.push(Some(String::from_utf8_lossy(s).into_owned()));
            }
            0x8c | b'U' | b'C' => {
                let n = uint(take(&mut pos, 1)?) as usize;
                let s = take(&mut pos, n)?;
                stack.push(Some(String::from_utf8_lossy(s).into_owned()));
            }
            0x8d | 0x8e | 0x96 => {
                let n = uint(take(&mut pos, 8)?) as usize;
                let s = take(&mut pos, n)?;
                stack.push(Some(String::from_utf8_lossy(s).into_owned()));
            }
            b'V' | b'S' => {
                let s = line(&mut pos)?;
                stack.push(Some(s));
            }
            // memo
            b'q' => {
                let k = uint(take(&mut pos, 1)?);
                memo.insert(k, stack.last().cloned().flatten());
            }
            b'r' => {
                let k = uint(take(&mut pos, 4)?);
                memo.insert(k, stack.last().cloned().flatten());
            }
            0x94 => {
                let k = memo.len() as u64;
                memo.insert(k, stack.last().cloned().flatten());
            }
            b'p' => {
                let k = line(&mut pos)?
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| "bad PUT")?;
                memo.insert(k, stack.last().cloned().flatten());
            }
            b'h' => {
                let k = uint(take(&mut pos, 1)?);
                stack.push(memo.get(&k).cloned().flatten());
            }
            b'j' => {
                let k = uint(take(&mut pos, 4)?);
                stack.push(memo.get(&k).cloned().flatten());
            }
            b'g' => {
                let k = line(&mut pos)?
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| "bad GET")?;
                stack.push(memo.get(&k).cloned().flatten());
            }
            // fixed-size arguments
            b'K' | 0x80 => {
                take(&mut pos, 1)?;
                stack.push(None);
            }
            b'M' => {
                take(&mut pos, 2)?;
                stack.push(None);
            }
            b'J' => {
                take(&mut pos, 4)?;
                stack.push(None);
            }
            b'G' => {
                take(&mut pos, 8)?;
                stack.push(None);
            }
            0x95 => {
                take(&mut pos, 8)?;
            }
            0x8a => {
                let n = uint(take(&mut pos, 1)?) as usize;
                take(&mut pos, n)?;
                stack.push(None);
            }
            0x8b => {
                let n = uint(take(&mut pos, 4)?) as usize;
                take(&mut pos, n)?;
                stack.push(None);
            }
            b'I' | b'L' | b'F' | b'P' => {
                line(&mut pos)?;
                stack.push(None);
            }
            // no argument
            b'('
            | b'0'
            | b'1'
            | b'2'
            | b'N'
            | b'R'
            | b'a'
            | b'b'
            | b'd'
            | b'}'
            | b'e'
            | b'l'
            | b']'
            | b'o'
            | b's'
            | b't'
            | b')'
            | b'u'
            | b'Q'
            | 0x81
            | 0x85..=0x89
            | 0x8f..=0x92
            | 0x97
            | 0x98 => {
                // The exact stack effect does not matter for the check; keep a marker.
                stack.push(None);
            }
            other => {
                return Err(format!(
                    "unknown pickle opcode 0x{other:02x} at byte {}",
                    pos - 1
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_code_execution() {
        let evil = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.";
        let err = scan(evil, 0).unwrap_err();
        assert!(err.contains("os.system"), "{err}");
        // protocol 4 STACK_GLOBAL form with memoised strings
        let evil4 = b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94\x8c\x011\x85R.";
        let err = scan(evil4, 0).unwrap_err();
        assert!(err.contains("builtins.eval"), "{err}");
    }

    #[test]
    fn accepts_tensor_containers() {
        let ok = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01.";
        assert_eq!(scan(ok, 0).unwrap(), ok.len());
        assert!(scan(b"\x80\x02ccollections\nOrderedDict\n", 0).is_err());
    }
}
