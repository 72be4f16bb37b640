//! Name lookups through the fleet's CoreDNS, from inside the namespace: a minimal DNS client (one
//! A question over UDP) so tests resolve `<svc>.<ns>.svc.cluster.local` as a pod would.

use std::{net::Ipv4Addr, time::Duration};

use super::netns::{DNS_IP, FleetNet};
use crate::{Error, Result};

/// The A record of `name` (fully qualified, or `<svc>.<ns>.svc`, completed with `cluster.local`)
/// as the fleet's CoreDNS answers it.
pub async fn resolve(net: &FleetNet, name: &str) -> Result<Ipv4Addr> {
    let fqdn = if name.ends_with(".svc") {
        format!("{name}.cluster.local")
    } else {
        name.to_string()
    };
    let socket = net.udp().await?;
    let id = fastrand_id();
    let query = encode_query(id, &fqdn).map_err(Error::Network)?;
    let server = format!("{DNS_IP}:53");
    let mut answer = [0u8; 1500];
    for _ in 0..3 {
        socket
            .send_to(&query, &server)
            .await
            .map_err(Error::io(format!("send a DNS query for {fqdn}")))?;
        match tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut answer)).await {
            Ok(Ok(n)) => {
                return decode_a(id, &answer[..n]).map_err(|e| Error::Network(format!("{fqdn}: {e}")));
            }
            Ok(Err(e)) => return Err(Error::io(format!("read the DNS answer for {fqdn}"))(e)),
            Err(_) => continue,
        }
    }
    Err(Error::Network(format!("no DNS answer for {fqdn} from {server}")))
}

fn fastrand_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos % 65_521) as u16
}

/// A query with one A question for `name`, recursion desired.
pub fn encode_query(id: u16, name: &str) -> std::result::Result<Vec<u8>, String> {
    let mut packet = Vec::with_capacity(64);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("`{name}`: labels must be 1 to 63 bytes"));
        }
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
    Ok(packet)
}

/// The first A record of an answer to query `id`.
pub fn decode_a(id: u16, packet: &[u8]) -> std::result::Result<Ipv4Addr, String> {
    let u16_at = |i: usize| -> std::result::Result<u16, String> {
        packet
            .get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated answer".to_string())
    };
    if u16_at(0)? != id {
        return Err("answer to another query".into());
    }
    let rcode = u16_at(2)? & 0x000f;
    if rcode != 0 {
        return Err(format!("DNS error code {rcode} (3: no such name)"));
    }
    let (questions, answers) = (u16_at(4)?, u16_at(6)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(packet, at)? + 4;
    }
    for _ in 0..answers {
        at = skip_name(packet, at)?;
        let (kind, length) = (u16_at(at)?, usize::from(u16_at(at + 8)?));
        let data = packet.get(at + 10..at + 10 + length).ok_or("truncated record")?;
        if kind == 1 && length == 4 {
            return Ok(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + length;
    }
    Err("no A record in the answer".into())
}

fn skip_name(packet: &[u8], mut at: usize) -> std::result::Result<usize, String> {
    loop {
        let len = *packet.get(at).ok_or("truncated name")?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => return Ok(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_with_a_compressed_name_gives_its_address() {
        let mut packet = encode_query(7, "minilm.demo.svc.cluster.local").unwrap();
        packet[2] = 0x81;
        packet[3] = 0x80;
        packet[7] = 1; // one answer
        packet.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 96, 3, 4]);
        assert_eq!(decode_a(7, &packet), Ok(Ipv4Addr::new(10, 96, 3, 4)));
        assert!(decode_a(8, &packet).unwrap_err().contains("another query"));
    }

    #[test]
    fn nxdomain_and_bad_names_are_errors() {
        let mut packet = encode_query(1, "nope.svc.cluster.local").unwrap();
        packet[3] = 0x83;
        assert!(decode_a(1, &packet).unwrap_err().contains("no such name"));
        assert!(encode_query(1, "a..b").is_err());
    }
}
