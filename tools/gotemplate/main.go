// Command gotemplate renders Ollama chat templates with Go's own text/template, filled in the
// way Ollama fills them in (its template package: the data map of Template.Execute, messages
// collated, the "json" function, missingkey=zero; its api types: Message, ToolCall, Tool and
// their JSON field order and String methods). llmops's tests compare its output with
// llmops/serving/gotemplate.py, the interpreter the deploy stage checks Modelfiles with.
//
// Standard library only. Reads a JSON list of cases from stdin:
//
//	[{"template": "...", "messages": [{"role", "content", "tool_calls": [...]}], "tools": [...]}]
//
// and writes a JSON list of the rendered strings (or exits 1 naming the case that failed).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

// templateArgs are a call's arguments as a template sees them: printed as JSON (Ollama >= 0.14).
type templateArgs map[string]any

func (t templateArgs) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(t)
	return string(b)
}

type ToolCallFunction struct {
	Index     int          `json:"index,omitempty"`
	Name      string       `json:"name"`
	Arguments templateArgs `json:"arguments"`
}

type ToolCall struct {
	Function ToolCallFunction `json:"function"`
}

type Message struct {
	Role      string     `json:"role"`
	Content   string     `json:"content"`
	Thinking  string     `json:"thinking,omitempty"`
	ToolCalls []ToolCall `json:"tool_calls,omitempty"`
	ToolName  string     `json:"tool_name,omitempty"`
}

// PropertyType is one JSON type name or several.
type PropertyType []string

func (pt *PropertyType) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		*pt = []string{s}
		return nil
	}
	var a []string
	if err := json.Unmarshal(data, &a); err != nil {
		return err
	}
	*pt = a
	return nil
}

func (pt PropertyType) MarshalJSON() ([]byte, error) {
	if len(pt) == 1 {
		return json.Marshal(pt[0])
	}
	return json.Marshal([]string(pt))
}

type ToolProperty struct {
	AnyOf       []ToolProperty `json:"anyOf,omitempty"`
	Type        PropertyType   `json:"type"`
	Items       any            `json:"items,omitempty"`
	Description string         `json:"description"`
	Enum        []any          `json:"enum,omitempty"`
}

type ToolFunction struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Parameters  struct {
		Type       string                  `json:"type"`
		Defs       any                     `json:"$defs,omitempty"`
		Items      any                     `json:"items,omitempty"`
		Required   []string                `json:"required"`
		Properties map[string]ToolProperty `json:"properties"`
	} `json:"parameters"`
}

func (t *ToolFunction) String() string {
	b, _ := json.Marshal(t)
	return string(b)
}

type Tool struct {
	Type     string       `json:"type"`
	Items    any          `json:"items,omitempty"`
	Function ToolFunction `json:"function"`
}

func (t Tool) String() string {
	b, _ := json.Marshal(t)
	return string(b)
}

type Tools []Tool

func (t Tools) String() string {
	b, _ := json.Marshal(t)
	return string(b)
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
}

type renderCase struct {
	Template string    `json:"template"`
	Messages []Message `json:"messages"`
	Tools    Tools     `json:"tools"`
}

// collate joins every system message's text and merges consecutive messages of one role (tool
// messages aside) with a blank line, as Ollama's template.collate does.
func collate(msgs []Message) (string, []*Message) {
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if n := len(collated); n > 0 && collated[n-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[n-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func render(c renderCase) (string, error) {
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(c.Template)
	if err != nil {
		return "", err
	}
	system, messages := collate(c.Messages)
	var b bytes.Buffer
	err = tmpl.Execute(&b, map[string]any{
		"System": system, "Messages": messages, "Tools": c.Tools, "Response": "",
		"Think": false, "IsThinkSet": false, "Query": "", "Document": "", "Instruction": "",
	})
	return b.String(), err
}

func main() {
	var cases []renderCase
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		fmt.Fprintln(os.Stderr, "gotemplate: stdin is not a JSON list of cases:", err)
		os.Exit(2)
	}
	out := make([]string, len(cases))
	for i, c := range cases {
		text, err := render(c)
		if err != nil {
			fmt.Fprintf(os.Stderr, "gotemplate: case %d: %v\n", i, err)
			os.Exit(1)
		}
		out[i] = text
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "gotemplate:", err)
		os.Exit(1)
	}
}
