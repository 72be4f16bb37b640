use std::{net::SocketAddr, sync::Arc, time::Instant};

use modelfleet_crds::v1alpha1::FallbackSpec;
use modelfleet_proto::ext_proc::{
    HeaderMap, HeaderValue, HttpBody, HttpHeaders, HttpTrailers, ListValue, Metadata, ProcessingRequest,
    ProcessingResponse, ProtocolConfiguration, Struct, Value, body_mutation::Mutation,
    processing_mode::BodySendMode, processing_request::Request, processing_response::Response, value::Kind,
};
use tokio::sync::watch;

use super::{exchange::Exchange, *};
use crate::{
    activity::Activity,
    config::RouterConfig,
    keys::KeyStore,
    load::LoadBoard,
    table::{ModelEntry, Table, tests_support::model_with_candidate},
};

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, last], 8080))
}

fn router(models: Vec<ModelEntry>, board: &LoadBoard, config: RouterConfig) -> Arc<Router> {
    let (_table, table_rx) = watch::channel(Arc::new(Table::new(models)));
    let (_keys, keys_rx) = watch::channel(Arc::new(KeyStore::default()));
    Arc::new(Router::new(
        config,
        table_rx,
        keys_rx,
        board.clone(),
        Activity::new(None),
    ))
}

/// `ns/emb` (served `emb`): stable r1 on .1 and .2, candidate r2 on .3 at weight 0.
fn fleet() -> (Arc<Router>, LoadBoard) {
    let board = LoadBoard::default();
    let r = router(
        vec![model_with_candidate(&board, 0)],
        &board,
        RouterConfig::default(),
    );
    (r, board)
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn metadata(namespace: &str, key: &str, value: Value) -> Metadata {
    Metadata {
        filter_metadata: [(
            namespace.to_owned(),
            Struct {
                fields: [(key.to_owned(), value)].into(),
            },
        )]
        .into(),
    }
}

fn mode(request: BodySendMode) -> Option<ProtocolConfiguration> {
    Some(ProtocolConfiguration {
        request_body_mode: request as i32,
        response_body_mode: request as i32,
        send_body_without_waiting_for_header_response: false,
    })
}

fn headers(mode_of: Option<BodySendMode>, end_of_stream: bool, extra: &[(&str, &str)]) -> ProcessingRequest {
    let mut list = vec![(":method", "POST"), (":path", "/v1/embeddings")];
    list.extend_from_slice(extra);
    ProcessingRequest {
        request: Some(Request::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: list
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: (*k).into(),
                        value: String::new(),
                        raw_value: v.as_bytes().to_vec(),
                    })
                    .collect(),
            }),
            end_of_stream,
        })),
        protocol_config: mode_of.and_then(mode),
        ..ProcessingRequest::default()
    }
}

fn body(bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Request::RequestBody(HttpBody {
            body: bytes.to_vec(),
            end_of_stream,
        })),
        ..ProcessingRequest::default()
    }
}

/// The destination header and the `envoy.lb` metadata of a routed answer (asserting they agree).
fn destination(answer: &ProcessingResponse) -> String {
    let common = match &answer.response {
        Some(Response::RequestHeaders(h)) => h.response.clone(),
        Some(Response::RequestBody(b)) => b.response.clone(),
        other => panic!("not a routed answer: {other:?}"),
    }
    .expect("a common response");
    assert!(common.clear_route_cache);
    let set = &common.header_mutation.expect("header mutation").set_headers;
    let header = set
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key == DESTINATION)
        .expect("the destination header");
    assert!(header.value.is_empty(), "raw_value only");
    let value = String::from_utf8(header.raw_value.clone()).expect("utf-8");
    let lb = &answer.dynamic_metadata.as_ref().expect("metadata").fields[LB_NAMESPACE];
    let Some(Kind::StructValue(lb)) = &lb.kind else {
        panic!("envoy.lb is a struct: {lb:?}")
    };
    assert_eq!(
        lb.fields[DESTINATION],
        string(&value),
        "header and metadata agree"
    );
    value
}

fn immediate(answers: &[ProcessingResponse]) -> (i32, serde_json::Value) {
    let [answer] = answers else {
        panic!("one answer expected: {answers:?}")
    };
    let Some(Response::ImmediateResponse(r)) = &answer.response else {
        panic!("an immediate response expected: {answer:?}")
    };
    let body = serde_json::from_slice(&r.body).expect("a JSON body");
    (r.status.expect("status").code, body)
}

fn echoed(answers: &[ProcessingResponse]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut end = false;
    for a in answers {
        let Some(Response::RequestBody(b)) = &a.response else {
            panic!("a body answer expected: {a:?}")
        };
        let mutation = b.response.as_ref().and_then(|c| c.body_mutation.as_ref());
        let Some(Mutation::StreamedResponse(s)) = mutation.and_then(|m| m.mutation.as_ref()) else {
            panic!("a streamed body expected: {a:?}")
        };
        assert!(!end, "nothing after end_of_stream");
        out.extend_from_slice(&s.body);
        end = s.end_of_stream;
    }
    (out, end)
}

#[test]
fn subset_hints_are_lists_comma_strings_or_bare_ips() {
    let s = Subset::parse(["10.0.1.1:8080", "10.0.1.2:8080, 10.0.1.3", "junk"]);
    assert_eq!(s.len(), 3);
    assert!(s.contains(addr(1)) && s.contains(addr(2)));
    assert!(
        s.contains(SocketAddr::from(([10, 0, 1, 3], 9))),
        "a bare IP allows any port"
    );
    assert!(!s.contains(SocketAddr::from(([10, 0, 1, 1], 9))));
    let list = Value {
        kind: Some(Kind::ListValue(ListValue {
            values: vec![string("10.0.1.2:8080")],
        })),
    };
    let hint = wire::subset(Some(&metadata(SUBSET_NAMESPACE, SUBSET_KEY, list))).expect("a hint");
    assert!(hint.contains(addr(2)) && !hint.contains(addr(1)));
    let odd = wire::subset(Some(&metadata(SUBSET_NAMESPACE, SUBSET_KEY, Value::default())));
    assert_eq!(
        odd,
        Some(Subset::default()),
        "present but unusable: allows nothing"
    );
    assert_eq!(
        wire::subset(Some(&metadata(LB_NAMESPACE, SUBSET_KEY, string("x")))),
        None
    );
}

#[test]
fn full_duplex_holds_the_header_answer_until_the_body_ends_then_echoes_it() {
    let (router, board) = fleet();
    let _busy = [board.entry(addr(1)).begin(), board.entry(addr(1)).begin()];
    let mut x = Exchange::new(router, EppMetrics::default());
    let now = Instant::now();
    let duplex = Some(BodySendMode::FullDuplexStreamed);
    assert!(x.on_message(headers(duplex, false, &[]), now).is_empty());
    assert!(x.on_message(body(br#"{"model": "emb", "#, false), now).is_empty());
    let answers = x.on_message(body(br#""input": "hi"}"#, true), now);
    assert_eq!(
        destination(&answers[0]),
        "10.0.1.2:8080,10.0.1.1:8080",
        "idle first, busy as fallback"
    );
    assert!(matches!(answers[0].response, Some(Response::RequestHeaders(_))));
    let (back, end) = echoed(&answers[1..]);
    assert_eq!(
        back, br#"{"model": "emb", "input": "hi"}"#,
        "the body, byte for byte"
    );
    assert!(end);
    assert_eq!(x.serving(), Some(addr(2)), "the pick counts one in flight");
    assert_eq!(board.entry(addr(2)).outstanding(), 1);

    // The proxy fell back to .1: the count moves there, and ends with the response.
    let served = metadata(LB_NAMESPACE, SERVED_KEY, string("10.0.1.1:8080"));
    let response_headers = ProcessingRequest {
        request: Some(Request::ResponseHeaders(HttpHeaders::default())),
        metadata_context: Some(served),
        ..ProcessingRequest::default()
    };
    let answers = x.on_message(response_headers, now);
    assert!(matches!(
        answers[..],
        [ProcessingResponse {
            response: Some(Response::ResponseHeaders(_)),
            ..
        }]
    ));
    assert_eq!(
        (
            board.entry(addr(1)).outstanding(),
            board.entry(addr(2)).outstanding()
        ),
        (3, 0)
    );
    let chunk = ProcessingRequest {
        request: Some(Request::ResponseBody(HttpBody {
            body: b"{}".to_vec(),
            end_of_stream: true,
        })),
        ..ProcessingRequest::default()
    };
    let answers = x.on_message(chunk, now);
    let Some(Response::ResponseBody(b)) = &answers[0].response else {
        panic!("{answers:?}")
    };
    let m = b
        .response
        .as_ref()
        .and_then(|c| c.body_mutation.clone())
        .and_then(|m| m.mutation);
    assert!(matches!(m, Some(Mutation::StreamedResponse(s)) if s.body == b"{}" && s.end_of_stream));
    assert_eq!(x.serving(), None);
    assert_eq!(board.entry(addr(1)).outstanding(), 2);
}

#[test]
fn buffered_mode_continues_the_headers_and_decides_on_the_body() {
    let (router, _board) = fleet();
    let mut x = Exchange::new(router, EppMetrics::default());
    let now = Instant::now();
    let stale = [("x-gateway-destination-endpoint-served", "1.2.3.4:5")];
    let first = x.on_message(headers(Some(BodySendMode::Buffered), false, &stale), now);
    let Some(Response::RequestHeaders(h)) = &first[0].response else {
        panic!("{first:?}")
    };
    assert_eq!(
        h.response.clone().unwrap_or_default(),
        Default::default(),
        "an empty go-on"
    );
    let answers = x.on_message(body(br#"{"model": "emb"}"#, true), now);
    assert_eq!(answers.len(), 1);
    assert_eq!(destination(&answers[0]).split(',').count(), 2);
    let Some(Response::RequestBody(b)) = &answers[0].response else {
        panic!("{answers:?}")
    };
    let common = b.response.clone().expect("common");
    assert_eq!(common.body_mutation, None, "the body is not touched");
    assert_eq!(
        common.header_mutation.expect("mutation").remove_headers,
        ["x-gateway-destination-endpoint-served"],
        "client-sent picker headers are dropped"
    );
}

#[test]
fn a_namespaced_name_is_renamed_to_the_served_one_with_its_length() {
    let (router, _board) = fleet();
    let mut x = Exchange::new(router, EppMetrics::default());
    let now = Instant::now();
    assert!(
        x.on_message(headers(None, false, &[]), now).is_empty(),
        "no protocol_config: full duplex"
    );
    let answers = x.on_message(body(br#"{"model":"ns/emb","input":"a"}"#, true), now);
    let Some(Response::RequestHeaders(h)) = &answers[0].response else {
        panic!("{answers:?}")
    };
    let set = h
        .response
        .clone()
        .and_then(|c| c.header_mutation)
        .expect("mutation")
        .set_headers;
    let length = set
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key == "content-length")
        .expect("content-length");
    let (back, _) = echoed(&answers[1..]);
    assert_eq!(back, br#"{"input":"a","model":"emb"}"#);
    assert_eq!(length.raw_value, back.len().to_string().as_bytes());
}

#[test]
fn refusals_are_immediate_responses_in_the_openai_envelope() {
    let (router, board) = fleet();
    let metrics = EppMetrics::default();
    let now = Instant::now();
    let run = |messages: Vec<ProcessingRequest>| {
        let mut x = Exchange::new(router.clone(), metrics.clone());
        let answers: Vec<_> = messages.into_iter().flat_map(|m| x.on_message(m, now)).collect();
        assert!(x.finished(), "an immediate response ends the exchange");
        immediate(&answers)
    };
    let duplex = Some(BodySendMode::FullDuplexStreamed);
    let (status, e) = run(vec![
        headers(duplex, false, &[]),
        body(br#"{"model": "nope"}"#, true),
    ]);
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    assert!(
        e["error"]["message"].as_str().unwrap_or("").contains("emb"),
        "{e}"
    );
    let (status, e) = run(vec![headers(duplex, false, &[]), body(b"not json", true)]);
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, _) = run(vec![headers(duplex, true, &[])]);
    assert_eq!(status, 400, "a request without a body names no model");
    let (status, e) = run(vec![headers(Some(BodySendMode::Streamed), false, &[])]);
    assert_eq!(status, 500);
    assert!(
        e["error"]["message"].as_str().unwrap_or("").contains("STREAMED"),
        "{e}"
    );

    let nowhere = metadata(SUBSET_NAMESPACE, SUBSET_KEY, string("10.9.9.9:80"));
    let mut hinted = headers(duplex, false, &[]);
    hinted.metadata_context = Some(nowhere);
    let (status, e) = run(vec![hinted, body(br#"{"model": "emb"}"#, true)]);
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (503, Some("model_unavailable"))
    );
    assert_eq!(metrics.get("model_unavailable"), 1);
    assert_eq!(metrics.get("model_not_found"), 1);
    assert_eq!(
        board.entry(addr(1)).outstanding(),
        0,
        "no refusal counts in flight"
    );
}

#[test]
fn a_subset_hint_restricts_the_pick_and_steers_the_revision() {
    let board = LoadBoard::default();
    // Half the requests go to the candidate (.3) unless the hint leaves it out.
    let router = router(
        vec![model_with_candidate(&board, 50)],
        &board,
        RouterConfig::default(),
    );
    let now = Instant::now();
    for _ in 0..4 {
        let mut x = Exchange::new(router.clone(), EppMetrics::default());
        let mut h = headers(None, false, &[]);
        h.metadata_context = Some(metadata(SUBSET_NAMESPACE, SUBSET_KEY, string("10.0.1.2")));
        assert!(x.on_message(h, now).is_empty());
        let answers = x.on_message(body(br#"{"model": "emb"}"#, true), now);
        assert_eq!(destination(&answers[0]), "10.0.1.2:8080");
    }
}

#[test]
fn a_model_over_its_queue_threshold_is_shed_with_429() {
    let board = LoadBoard::default();
    let mut model = model_with_candidate(&board, 0);
    model.routing.fallback = Some(FallbackSpec {
        model: "absent".into(),
        queue_depth_above: Some(2.0),
        ..FallbackSpec::default()
    });
    let router = router(vec![model], &board, RouterConfig::default());
    let now = Instant::now();
    let ask = |router: &Arc<Router>| {
        let mut x = Exchange::new(router.clone(), EppMetrics::default());
        x.on_message(headers(None, false, &[]), now);
        x.on_message(body(br#"{"model": "emb"}"#, true), now)
    };
    board.entry(addr(1)).report(3, now);
    assert!(
        destination(&ask(&router)[0]).starts_with("10.0.1.2"),
        "1.5 a replica on average: not over"
    );
    board.entry(addr(2)).report(3, now);
    let (status, e) = immediate(&ask(&router));
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (429, Some("model_overloaded"))
    );
}

#[test]
fn trailers_end_a_streamed_body_and_big_bodies_are_refused() {
    let (router, _board) = fleet();
    let now = Instant::now();
    let mut x = Exchange::new(router.clone(), EppMetrics::default());
    x.on_message(headers(None, false, &[]), now);
    x.on_message(body(br#"{"model": "emb"}"#, false), now);
    let trailers = ProcessingRequest {
        request: Some(Request::RequestTrailers(HttpTrailers::default())),
        ..ProcessingRequest::default()
    };
    let answers = x.on_message(trailers, now);
    assert_eq!(answers.len(), 3, "headers, the body, the trailers: {answers:?}");
    let (back, end) = echoed(&answers[1..2]);
    assert_eq!((back.as_slice(), end), (br#"{"model": "emb"}"#.as_slice(), false));
    assert!(matches!(answers[2].response, Some(Response::RequestTrailers(_))));

    let board = LoadBoard::default();
    let small = RouterConfig {
        max_body_bytes: 8,
        ..RouterConfig::default()
    };
    let router = super::tests::router(vec![model_with_candidate(&board, 0)], &board, small);
    let mut x = Exchange::new(router, EppMetrics::default());
    x.on_message(headers(None, false, &[]), now);
    let (status, _) = immediate(&x.on_message(body(br#"{"model": "emb"}"#, false), now));
    assert_eq!(status, 413);
}

#[test]
fn observability_mode_gets_no_answers() {
    let (router, board) = fleet();
    let mut x = Exchange::new(router, EppMetrics::default());
    let now = Instant::now();
    let mut h = headers(None, false, &[]);
    h.observability_mode = true;
    let mut b = body(br#"{"model": "emb"}"#, true);
    b.observability_mode = true;
    assert!(x.on_message(h, now).is_empty());
    assert!(x.on_message(b, now).is_empty());
    assert_eq!(
        board.entry(addr(1)).outstanding() + board.entry(addr(2)).outstanding(),
        0
    );
}

#[test]
fn the_picker_is_off_unless_an_address_is_given() {
    use clap::Parser;
    let cli = crate::config::Cli::parse_from(["modelfleet-router"]);
    assert_eq!(cli.epp_addr, None);
    let cli = crate::config::Cli::parse_from(["modelfleet-router", "--epp-addr=0.0.0.0:9002"]);
    assert_eq!(
        cli.epp_addr.map(|a| a.port()),
        Some(modelfleet_contract::router_ports::EPP)
    );
}
