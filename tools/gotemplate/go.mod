module llmops/tools/gotemplate

go 1.19
